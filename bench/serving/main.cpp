// lightcore_loadgen: the serving benchmark against an OpenAI-compatible streaming server
// (closed loop of concurrent clients; QPS, tokens/s, TTFT / ITL / latency, goodput).
// Usage: lightcore_loadgen [--flag value]...; --help lists every flag with its default.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "bench/serving/config.hpp"
#include "bench/serving/loadgen.hpp"
#include "bench/serving/report.hpp"

namespace {

using lightcore::loadgen::run_config;

struct cli_options {
  run_config run;
  std::string json_path;  // --json: where to write the JSON report; empty: none
  bool quiet = false;     // --quiet: no progress lines on stderr
};

// A flag: its name, the metavariable and help shown by --help, its default as text, and how it
// applies its value.
struct flag {
  std::string name;
  std::string meta;
  std::string help;
  std::function<std::string(cli_options const&)> show;
  std::function<void(cli_options&, std::string const&)> set;
};

template <class T>
T parse_number(std::string const& flag_name, std::string const& text) {
  T value{};
  char const* const end = text.data() + text.size();
  auto const [ptr, ec] = std::from_chars(text.data(), end, value);
  LC_CHECK(ec == std::errc{} && ptr == end, flag_name << " expects a number, got '" << text << "'");
  return value;
}

std::string join_ids(std::vector<std::int32_t> const& ids) {
  std::string out;
  for (std::int32_t const id : ids) out += (out.empty() ? "" : ",") + std::to_string(id);
  return out;
}

std::string show_double(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::vector<flag> make_flags() {
  using lightcore::loadgen::token_id;
  std::vector<flag> f;
  auto add = [&](std::string name, std::string meta, std::string help, auto show, auto set) {
    f.push_back({std::move(name), std::move(meta), std::move(help), show, set});
  };
  add(
      "--host", "ADDR", "server address", [](cli_options const& o) { return o.run.host; },
      [](cli_options& o, std::string const& v) { o.run.host = v; });
  add(
      "--port", "N", "server port", [](cli_options const& o) { return std::to_string(o.run.port); },
      [](cli_options& o, std::string const& v) { o.run.port = parse_number<int>("--port", v); });
  add(
      "--path", "PATH", "endpoint of streaming completions",
      [](cli_options const& o) { return o.run.path; },
      [](cli_options& o, std::string const& v) { o.run.path = v; });
  add(
      "--model", "NAME", "\"model\" field of each request (omitted when empty)",
      [](cli_options const& o) { return o.run.model.empty() ? "\"\"" : o.run.model; },
      [](cli_options& o, std::string const& v) { o.run.model = v; });
  add(
      "--num-clients", "N", "concurrent closed-loop clients",
      [](cli_options const& o) { return std::to_string(o.run.num_clients); },
      [](cli_options& o, std::string const& v) {
        o.run.num_clients = parse_number<int>("--num-clients", v);
      });
  add(
      "--request-rate", "R",
      "open loop: Poisson arrivals at R requests/s, each on its own connection (0: closed loop)",
      [](cli_options const& o) { return show_double(o.run.request_rate); },
      [](cli_options& o, std::string const& v) {
        o.run.request_rate = parse_number<double>("--request-rate", v);
      });
  add(
      "--max-concurrency", "N", "open loop: requests in flight at most",
      [](cli_options const& o) { return std::to_string(o.run.max_concurrency); },
      [](cli_options& o, std::string const& v) {
        o.run.max_concurrency = parse_number<int>("--max-concurrency", v);
      });
  add(
      "--num-requests", "N", "measured requests (0: until --duration ends)",
      [](cli_options const& o) { return std::to_string(o.run.num_requests); },
      [](cli_options& o, std::string const& v) {
        o.run.num_requests = parse_number<std::int64_t>("--num-requests", v);
      });
  add(
      "--duration", "SECONDS", "length of the measured phase (0: until --num-requests are done)",
      [](cli_options const& o) { return show_double(o.run.duration_s); },
      [](cli_options& o, std::string const& v) {
        o.run.duration_s = parse_number<double>("--duration", v);
      });
  add(
      "--warmup", "N", "requests sent before measuring, left out of the stats",
      [](cli_options const& o) { return std::to_string(o.run.warmup_requests); },
      [](cli_options& o, std::string const& v) {
        o.run.warmup_requests = parse_number<std::int64_t>("--warmup", v);
      });
  add(
      "--input-len", "TOKENS", "prompt length (random token ids)",
      [](cli_options const& o) { return std::to_string(o.run.workload.input_len); },
      [](cli_options& o, std::string const& v) {
        o.run.workload.input_len = parse_number<std::int64_t>("--input-len", v);
      });
  add(
      "--output-len", "TOKENS", "mean output length (Gaussian)",
      [](cli_options const& o) { return show_double(o.run.workload.output_len_mean); },
      [](cli_options& o, std::string const& v) {
        o.run.workload.output_len_mean = parse_number<double>("--output-len", v);
      });
  add(
      "--output-std", "TOKENS", "standard deviation of the output length (0: fixed)",
      [](cli_options const& o) { return show_double(o.run.workload.output_len_std); },
      [](cli_options& o, std::string const& v) {
        o.run.workload.output_len_std = parse_number<double>("--output-std", v);
      });
  add(
      "--output-max", "TOKENS", "upper clamp of the output length (lower clamp: 1)",
      [](cli_options const& o) { return std::to_string(o.run.workload.output_len_max); },
      [](cli_options& o, std::string const& v) {
        o.run.workload.output_len_max = parse_number<std::int64_t>("--output-max", v);
      });
  add(
      "--vocab", "MIN:MAX", "token ids are drawn from [MIN, MAX)",
      [](cli_options const& o) {
        return std::to_string(o.run.workload.vocab_min) + ":" +
               std::to_string(o.run.workload.vocab_max);
      },
      [](cli_options& o, std::string const& v) {
        auto const colon = v.find(':');
        LC_CHECK(colon != std::string::npos, "--vocab expects MIN:MAX, got '" << v << "'");
        o.run.workload.vocab_min = parse_number<token_id>("--vocab", v.substr(0, colon));
        o.run.workload.vocab_max = parse_number<token_id>("--vocab", v.substr(colon + 1));
      });
  add(
      "--special-ids", "ID,ID,...", "token ids never drawn (BOS, EOS, template markers)",
      [](cli_options const& o) {
        auto const s = join_ids(o.run.workload.special_ids);
        return s.empty() ? std::string("\"\"") : s;
      },
      [](cli_options& o, std::string const& v) {
        o.run.workload.special_ids.clear();
        std::size_t begin = 0;
        while (begin < v.size()) {
          std::size_t end = v.find(',', begin);
          if (end == std::string::npos) end = v.size();
          o.run.workload.special_ids.push_back(
              parse_number<token_id>("--special-ids", v.substr(begin, end - begin)));
          begin = end + 1;
        }
      });
  add(
      "--seed", "N", "seed of the workload (same seed: same prompts and lengths)",
      [](cli_options const& o) { return std::to_string(o.run.workload.seed); },
      [](cli_options& o, std::string const& v) {
        o.run.workload.seed = parse_number<std::uint64_t>("--seed", v);
      });
  add(
      "--connect-timeout", "SECONDS", "TCP connect timeout",
      [](cli_options const& o) { return show_double(o.run.connect_timeout_s); },
      [](cli_options& o, std::string const& v) {
        o.run.connect_timeout_s = parse_number<double>("--connect-timeout", v);
      });
  add(
      "--read-timeout", "SECONDS", "longest silence on a stream before it counts as failed",
      [](cli_options const& o) { return show_double(o.run.read_timeout_s); },
      [](cli_options& o, std::string const& v) {
        o.run.read_timeout_s = parse_number<double>("--read-timeout", v);
      });
  add(
      "--slo-ttft-ms", "MS", "goodput: TTFT bound (0: none)",
      [](cli_options const& o) { return show_double(o.run.slo.ttft_ms); },
      [](cli_options& o, std::string const& v) {
        o.run.slo.ttft_ms = parse_number<double>("--slo-ttft-ms", v);
      });
  add(
      "--slo-itl-ms", "MS", "goodput: bound on each request's ITL p99 (0: none)",
      [](cli_options const& o) { return show_double(o.run.slo.itl_p99_ms); },
      [](cli_options& o, std::string const& v) {
        o.run.slo.itl_p99_ms = parse_number<double>("--slo-itl-ms", v);
      });
  add(
      "--json", "FILE", "also write the report (configuration and results) as JSON",
      [](cli_options const& o) { return o.json_path.empty() ? "\"\"" : o.json_path; },
      [](cli_options& o, std::string const& v) { o.json_path = v; });
  return f;
}

void print_help(std::vector<flag> const& flags) {
  cli_options const defaults;
  std::cout
      << "lightcore_loadgen: closed-loop serving benchmark against an OpenAI-compatible\n"
         "streaming /v1/completions endpoint.\n\nUsage: lightcore_loadgen [--flag value]...\n\n";
  for (flag const& f : flags) {
    std::string const head = f.name + " " + f.meta;
    std::cout << "  " << head << std::string(head.size() < 30 ? 30 - head.size() : 1, ' ') << f.help
              << " (default " << f.show(defaults) << ")\n";
  }
  std::cout << "  --quiet" << std::string(23, ' ') << "no progress lines on stderr\n"
            << "  --help" << std::string(24, ' ') << "this text\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<flag> const flags = make_flags();
  cli_options opt;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string const arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_help(flags);
        return 0;
      }
      if (arg == "--quiet") {
        opt.quiet = true;
        continue;
      }
      auto const it =
          std::find_if(flags.begin(), flags.end(), [&](flag const& f) { return f.name == arg; });
      LC_CHECK(it != flags.end(), "unknown argument '" << arg << "'; --help lists the flags");
      LC_CHECK(i + 1 < argc, arg << " needs a value (" << it->meta << ")");
      it->set(opt, argv[++i]);
    }
    lightcore::loadgen::validate(opt.run);
  } catch (lightcore::error const& e) {
    std::cerr << "lightcore_loadgen: " << e.message() << '\n';
    return 2;
  }

  try {
    auto const out = lightcore::loadgen::run(opt.run, opt.quiet ? nullptr : &std::cerr);
    lightcore::loadgen::print_table(std::cout, opt.run, out.stats);
    if (opt.run.request_rate > 0.0)
      std::cout << "open loop at " << opt.run.request_rate << " requests/s: " << out.late_requests
                << " requests sent more than 1 ms late\n";
    if (!opt.json_path.empty()) {
      std::ofstream file(opt.json_path);
      LC_CHECK(file, "cannot open '" << opt.json_path << "' for writing the JSON report");
      file << lightcore::loadgen::make_report(opt.run, out.stats).dump(2) << '\n';
      LC_CHECK(file.good(), "writing the JSON report to '" << opt.json_path << "' failed");
    }
    return out.stats.errors == 0 ? 0 : 1;
  } catch (std::exception const& e) {
    std::cerr << "lightcore_loadgen: " << e.what() << '\n';
    return 2;
  }
}
