// lightcore_server: the reference server. One command starts the front end (this process) and the
// engine process, joined by a shared-memory request table, and supervises the engine: if it dies,
// /health fails, requests in flight get an error, and the server exits non-zero.
//
//   lightcore_server [--model DIR | --dummy CONFIG] [--tokenizer PATH] [--host 127.0.0.1]
//                    [--port 8000] [--device auto|cpu|cuda] ...   (--help lists every flag)
//
// Without --model or --dummy it serves the built-in tiny model (DeepSeek-V3's structure and
// vocabulary at toy width, seeded random weights). Like every model it runs where --device says:
// with the default, auto, that is the GPU when the build has CUDA and a GPU is visible, else the
// CPU. --mock-engine runs no model at all (the front end and the IPC measured alone).
//
// --role prefill / decode / pd-router run the parts of a prefill/decode-separated deployment
// (docs/pd.md, "Server roles"); the pd-router loads no model and forks no engine.
#include <httplib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "engine_process.hpp"
#include "engine_stats.hpp"
#include "frontend.hpp"
#include "lightcore/io/hf_config.hpp"
#include "lightcore/ipc/shm_region.hpp"
#include "lightcore/ipc/signal_cleanup.hpp"
#include "pd_control.hpp"
#include "pd_router.hpp"

namespace lightcore::server {
extern char const* const tiny_model_config;  // tiny_model.json, embedded at build time
}

namespace {

using namespace lightcore;
using namespace lightcore::server;

struct flag {
  char const* name;
  char const* value;  // nullptr: a switch
  char const* help;
};

constexpr flag flags[] = {
    {"--model", "DIR", "Hugging Face checkpoint directory (config.json + safetensors)"},
    {"--dummy", "CONFIG", "config.json to serve with seeded random weights"},
    {"--seed", "N", "seed of the dummy weights (default 0)"},
    {"--tokenizer", "PATH", "tokenizer.json or its directory (default .cache/tokenizer)"},
    {"--host", "ADDR", "address to bind (default 127.0.0.1)"},
    {"--port", "N", "port (default 8000; 0: any free port)"},
    {"--device", "D", "auto, cpu or cuda (default auto: cuda when a GPU is visible)"},
    {"--served-model-name", "NAME",
     "the model name of the API (default lightcore-tiny or the "
     "checkpoint's directory name)"},
    {"--chat-flavour", "F", "chat format: v3 or r1 (R1's reasoning handling; default v3)"},
    {"--max-running", "N", "requests in one step, at most (default 64)"},
    {"--max-seq-len", "N", "prompt + output tokens of one request (default 4096)"},
    {"--max-tokens-per-step", "N", "tokens of one forward pass (chunked prefill; default 2048)"},
    {"--kv-tokens", "N",
     "KV pool slots (default: from --kv-memory-fraction on the GPU, 65536 "
     "on the CPU)"},
    {"--kv-memory-fraction", "F", "share of free GPU memory for the KV pool (default 0.85)"},
    {"--max-top-logprobs", "N",
     "alternatives per token a request may ask for (top_logprobs; 0..20, default 0); each costs "
     "8 bytes of shared memory per output token per slot"},
    {"--slots", "N",
     "requests in flight in the front end, at most (default 256); more get 429; the HTTP "
     "threads are sized from it"},
    {"--max-queue", "N",
     "requests waiting in the engine for admission, at most (default 0: no limit); more get 429"},
    {"--api-key", "KEY",
     "require \"Authorization: Bearer KEY\" on every endpoint but /health, /metrics and /pd/info "
     "(default: $LIGHTCORE_API_KEY, else none)"},
    {"--mock-engine", nullptr,
     "run no model: one token per live request per step (front-end and IPC benchmarks)"},
    {"--no-prefix-cache", nullptr, "disable the radix prefix cache"},
    {"--role", "R",
     "single (default), prefill, decode or pd-router (prefill/decode separation, docs/pd.md)"},
    {"--control-port", "N", "prefill/decode: the engine's control endpoint port (default 0: any)"},
    {"--advertise-host", "ADDR",
     "prefill/decode: the address peers reach this instance's control and KV endpoints at "
     "(default: --host)"},
    {"--kv-host", "ADDR", "decode: the TCP KV server's bind address (default: --host)"},
    {"--kv-port", "N", "decode: the TCP KV server's port (default 0: any free port)"},
    {"--pd-timeout-ms", "N",
     "prefill/decode/pd-router: a KV transfer's budget from its first layer (default 30000)"},
    {"--pd-start-timeout-ms", "N",
     "pd-router: how long a prompt may wait for its prefill, queue included; the decode side "
     "holds its slots that long (default 600000)"},
    {"--pd-transport", "T",
     "prefill (CUDA): how KV reaches decode instances: auto (default: CUDA IPC on this node, "
     "NCCL on others), ipc or nccl"},
    {"--pd-send-after-prefill", nullptr,
     "prefill: send a prompt's KV after its prefill step instead of layer by layer during it "
     "(for comparison)"},
    {"--prefill", "URL", "pd-router: a prefill instance, http://host:port (repeatable)"},
    {"--decode", "URL", "pd-router: a decode instance, http://host:port (repeatable)"},
    {"--help", nullptr, "this list"},
};

[[noreturn]] void usage(int code, std::string const& why = {}) {
  std::ostream& out = code == 0 ? std::cout : std::cerr;
  if (!why.empty()) out << "lightcore_server: " << why << "\n";
  out << "usage: lightcore_server [flags]\n";
  for (flag const& f : flags)
    out << "  " << f.name << (f.value ? std::string(" ") + f.value : std::string()) << "\n      "
        << f.help << "\n";
  std::exit(code);
}

struct options {
  engine_options engine;
  frontend_options front;
  std::filesystem::path tokenizer = ".cache/tokenizer";
  std::uint32_t slots = 256;
  std::string config_text;  // the dummy model's config.json
  server_role role = server_role::single;
  router_options router;
  bool kv_host_given = false;
};

std::int64_t to_int(std::string const& flag, std::string const& v, std::int64_t lo,
                    std::int64_t hi) {
  std::size_t used = 0;
  std::int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (std::exception const&) {
    used = 0;
  }
  if (used != v.size() || x < lo || x > hi)
    usage(2, flag + " " + v + ": allowed: an integer in [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]");
  return x;
}

options parse(int argc, char** argv) {
  options o;
  o.config_text = tiny_model_config;
  o.front.api.served_model_name = "lightcore-tiny";
  bool named = false;
  bool key_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string const a = argv[i];
    flag const* f = nullptr;
    for (flag const& x : flags)
      if (a == x.name) f = &x;
    if (!f) usage(2, "unknown flag " + a);
    if (!f->value) {
      if (a == "--help") usage(0);
      if (a == "--no-prefix-cache") o.engine.prefix_cache = false;
      if (a == "--mock-engine") o.engine.mock = true;
      if (a == "--pd-send-after-prefill") o.engine.pd_stream_layers = false;
      continue;
    }
    if (i + 1 >= argc) usage(2, a + " needs a value (" + f->value + ")");
    std::string const v = argv[++i];
    if (a == "--model") {
      o.engine.model = v;
      o.config_text.clear();
      if (!named) o.front.api.served_model_name = std::filesystem::path(v).filename().string();
    } else if (a == "--dummy") {
      o.engine.config = v;
      o.config_text.clear();
      if (!named) o.front.api.served_model_name = std::filesystem::path(v).stem().string();
    } else if (a == "--seed") {
      o.engine.seed = std::uint64_t(to_int(a, v, 0, INT64_MAX));
    } else if (a == "--tokenizer") {
      o.tokenizer = v;
    } else if (a == "--host") {
      o.front.host = v;
    } else if (a == "--port") {
      o.front.port = int(to_int(a, v, 0, 65535));
    } else if (a == "--device") {
      if (v != "auto" && v != "cpu" && v != "cuda")
        usage(2, "--device " + v + ": allowed: auto, cpu, cuda");
      o.engine.device = v;
    } else if (a == "--served-model-name") {
      o.front.api.served_model_name = v;
      named = true;
    } else if (a == "--chat-flavour") {
      try {
        o.front.api.chat_flavour = text::deepseek_v3::parse_chat_flavour(v);
      } catch (std::exception const& e) {
        usage(2, std::string("--chat-flavour: ") + e.what());
      }
    } else if (a == "--max-running") {
      o.engine.max_running = std::int32_t(to_int(a, v, 1, 4096));
    } else if (a == "--max-seq-len") {
      o.engine.max_seq_len = to_int(a, v, 2, 1 << 20);
    } else if (a == "--max-tokens-per-step") {
      o.engine.max_tokens_per_step = to_int(a, v, 1, 1 << 20);
    } else if (a == "--kv-tokens") {
      o.engine.kv_tokens = to_int(a, v, 1, INT32_MAX);
    } else if (a == "--kv-memory-fraction") {
      double const x = std::atof(v.c_str());
      if (!(x > 0.0 && x < 1.0)) usage(2, "--kv-memory-fraction " + v + ": allowed: (0, 1)");
      o.engine.kv_memory_fraction = x;
    } else if (a == "--max-top-logprobs") {
      o.front.max_top_logprobs = std::uint32_t(to_int(a, v, 0, 20));
    } else if (a == "--slots") {
      o.slots = std::uint32_t(to_int(a, v, 1, 65536));
    } else if (a == "--max-queue") {
      o.front.max_queue = to_int(a, v, 0, INT32_MAX);
    } else if (a == "--role") {
      try {
        o.role = role_from_name(v);
      } catch (std::exception const& e) {
        usage(2, std::string("--role: ") + e.what());
      }
      o.engine.role = std::string(name_of(o.role));
    } else if (a == "--control-port") {
      o.engine.control_port = int(to_int(a, v, 0, 65535));
    } else if (a == "--advertise-host") {
      o.engine.advertise_host = v;
    } else if (a == "--kv-host") {
      o.engine.kv_host = v;
      o.kv_host_given = true;
    } else if (a == "--kv-port") {
      o.engine.kv_port = int(to_int(a, v, 0, 65535));
    } else if (a == "--pd-timeout-ms") {
      o.engine.pd_timeout_ms = to_int(a, v, 1, INT32_MAX);
      o.router.timeout_ms = o.engine.pd_timeout_ms;
    } else if (a == "--pd-transport") {
      if (v != "auto" && v != "ipc" && v != "nccl")
        usage(2, "--pd-transport is '" + v + "'; allowed: auto, ipc, nccl");
      o.engine.pd_transport = v;
    } else if (a == "--pd-start-timeout-ms") {
      o.router.start_timeout_ms = to_int(a, v, 1, INT32_MAX);
    } else if (a == "--prefill" || a == "--decode") {
      try {
        parse_http_url(v);
      } catch (std::exception const& e) {
        usage(2, a + ": " + e.what());
      }
      (a == "--prefill" ? o.router.prefill : o.router.decode).push_back(v);
    } else if (a == "--api-key") {
      if (v.empty()) usage(2, "--api-key: the key is empty; allowed: a non-empty string");
      o.front.api_key = v;
      key_given = true;
    }
  }
  if (!o.engine.model.empty() && !o.engine.config.empty())
    usage(2, "--model and --dummy exclude each other");
  if (o.role == server_role::router && (o.router.prefill.empty() || o.router.decode.empty()))
    usage(2, "--role pd-router needs at least one --prefill URL and one --decode URL");
  if (o.role != server_role::router && (!o.router.prefill.empty() || !o.router.decode.empty()))
    usage(2, "--prefill and --decode are flags of --role pd-router");
  if (o.role != server_role::single && o.engine.mock)
    usage(2, "--mock-engine serves the single role only");
  o.engine.control_host = o.front.host;
  if (!o.kv_host_given) o.engine.kv_host = o.front.host;
  if (!key_given)
    if (char const* k = std::getenv("LIGHTCORE_API_KEY"); k != nullptr && *k != 0)
      o.front.api_key = k;
  auto& api = o.front.api;
  api.max_model_len = o.engine.max_seq_len;
  api.max_prompt_tokens = o.engine.max_seq_len - 1;
  api.max_new_tokens = std::min<std::int64_t>(o.engine.max_seq_len - 1, 1 << 16);
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  options o = parse(argc, argv);
  text::tokenizer tok = std::filesystem::is_directory(o.tokenizer)
                            ? text::tokenizer::from_directory(o.tokenizer)
                            : text::tokenizer::from_file(o.tokenizer);
  io::model_config const config =
      !o.config_text.empty()     ? io::parse_model_config(o.config_text, "the built-in tiny model")
      : !o.engine.config.empty() ? io::load_model_config(o.engine.config)
                                 : io::load_model_config(o.engine.model / "config.json");
  for (auto const id : config.eos_token_ids) o.front.eos_ids.push_back(std::int32_t(id));
  o.engine.mock_vocab = std::min<std::int64_t>(config.vocab_size, std::int64_t(tok.vocab_size()));
  LC_CHECK(std::int64_t(tok.vocab_size()) <= config.vocab_size,
           "the tokenizer has " << tok.vocab_size() << " tokens but the model's vocabulary is "
                                << config.vocab_size);

  // The request table, private to this user and removed on exit (SIGINT/SIGTERM included); a
  // crashed run's segments are removed first.
  ipc::install_signal_cleanup();
  ipc::remove_stale("lightcore");
  std::string const table_name =
      ipc::instance_name("lightcore", ipc::default_instance_id(), "requests");
  // The records are sized from the API's limits, the one place they are decided: the parsers
  // refuse anything larger before a record is touched.
  ipc::request_table_config tc;
  tc.slots = o.slots;
  // Every request in flight holds a control handler thread on P and D; 32 more for the
  // protocol's messages, /pd/info and /pd/load.
  o.engine.control_threads = std::int64_t(o.slots) + 32;
  tc.max_prompt = std::uint32_t(o.front.api.max_prompt_tokens);
  tc.max_output = std::uint32_t(o.front.api.max_new_tokens);
  tc.top_logprobs = o.front.max_top_logprobs;
  table_type table = table_type::create(table_name, tc);
  o.engine.table_name = table_name;
  // The engine's stats for /metrics, created here so that the cleanup registry covers it.
  engine_stats_block stats = engine_stats_block::create(
      ipc::instance_name("lightcore", ipc::default_instance_id(), "stats"), tc.slots);
  o.engine.stats_name = stats.name();

  // The pd-router runs no model: a dispatcher in this process serves the table by running each
  // request on a prefill and a decode instance.
  if (o.role == server_role::router) {
    pd_registry registry(o.router);
    o.front.unavailable = [&registry] { return registry.unavailable(); };
    frontend front(o.front, table, stats, tok);
    int const port = front.bind();
    pd_dispatcher dispatcher(table, registry, o.router);
    std::cout << "lightcore_server: pd-router for " << o.front.api.served_model_name
              << " serving on http://" << o.front.host << ":" << port << std::endl;
    front.serve();
    return 0;
  }

  // The engine process. It reports readiness (or its death) through a pipe, and dies with us.
  int ready[2];
  LC_CHECK(::pipe(ready) == 0, "pipe: " << std::strerror(errno));
  o.engine.config_text = o.config_text;
  std::fflush(nullptr);
  pid_t const child = ::fork();
  LC_CHECK(child >= 0, "fork: " << std::strerror(errno));
  if (child == 0) {
    ::close(ready[0]);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() == 1) ::_exit(1);
    o.engine.ready_fd = ready[1];
    ::_exit(run_engine(o.engine));
  }
  ::close(ready[1]);
  char byte = 0;
  ssize_t const got = ::read(ready[0], &byte, 1);
  std::int32_t control_port = 0;
  bool const has_control = o.role != server_role::single;
  bool const port_read =
      !has_control || ::read(ready[0], &control_port, sizeof control_port) == sizeof control_port;
  ::close(ready[0]);
  if (got != 1 || !port_read) {
    int status = 0;
    ::waitpid(child, &status, 0);
    std::cerr << "lightcore_server: the engine process failed to start\n";
    return 1;
  }

  if (has_control) {
    // The public address names the engine's control endpoint, where peers and routers go.
    std::string const control =
        "http://" + (o.engine.advertise_host.empty() ? o.front.host : o.engine.advertise_host) +
        ":" + std::to_string(control_port);
    std::string const role(name_of(o.role));
    o.front.extra_routes = [control, role](httplib::Server& s) {
      s.Get("/pd/info", [control, role](httplib::Request const&, httplib::Response& res) {
        res.set_content(nlohmann::json{{"role", role}, {"control", control}}.dump(),
                        "application/json");
      });
    };
    std::cerr << "lightcore_server: " << role << " control endpoint " << control << "\n";
  }
  frontend front(o.front, table, stats, tok);
  int const port = front.bind();
  std::cout << "lightcore_server: serving " << o.front.api.served_model_name << " on http://"
            << o.front.host << ":" << port << std::endl;
  std::thread supervisor([&] {
    int status = 0;
    ::waitpid(child, &status, 0);
    front.engine_died(
        WIFSIGNALED(status)
            ? "the engine process was killed by signal " + std::to_string(WTERMSIG(status))
            : "the engine process exited with status " + std::to_string(WEXITSTATUS(status)));
    std::cerr << "lightcore_server: the engine process ended; shutting down\n";
    front.stop();
  });
  front.serve();
  ::kill(child, SIGTERM);
  supervisor.join();
  return 1;  // serving ends only when the engine is gone
} catch (std::exception const& e) {
  std::cerr << "lightcore_server: " << e.what() << "\n";
  return 1;
}
