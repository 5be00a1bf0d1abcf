// The prefill role of an engine process: POST /pd/prefill runs a prompt with hold_kv and
// max_new_tokens 1 and answers the router with the first token. The prompt's KV goes into the
// slots the decode instance allocated (kv_sender) layer by layer while the step that completes
// the prompt runs (the engine's kv_stream_observer; after the step on engines that cannot call
// back per layer), and the held KV is given back once the transfer has ended either way. POST
// /pd/cancel ends a request or its transfer; POST /pd/message takes the decode side's aborts.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "lightcore/pd/kv_sender.hpp"
#include "lightcore/pd/messages.hpp"
#include "lightcore/pd/tcp_transport.hpp"
#include "pd_node.hpp"
#if defined(LIGHTCORE_WITH_CUDA)
#include "kernels/index/index.hpp"
#include "lightcore/pd/cuda_ipc_transport.hpp"
#if defined(LIGHTCORE_WITH_NCCL)
#include <nccl.h>

#include <cstring>

#include "lightcore/pd/nccl_framing.hpp"
#include "lightcore/pd/nccl_transport.hpp"
#endif
#endif

namespace lightcore::server {

// This machine's name: CUDA IPC needs both instances on one node.
inline std::string pd_node_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// One decode instance as the prefill side reaches it: a transport into its pool and the
// kv_sender over that transport.
class pd_link {
 public:
  using release_fn = std::function<void(std::span<std::int32_t const>)>;
  virtual ~pd_link() = default;
  virtual void begin(pd::allocate_response const& r, std::span<std::int32_t const> slots,
                     release_fn release) = 0;
  virtual bool send_layer(pd::transfer_id id, std::int32_t layer) = 0;
  virtual bool cancel(pd::transfer_id id, std::string text) = 0;
  virtual void handle(pd::message const& m) = 0;
  virtual std::vector<pd::sender_event> poll() = 0;
  virtual std::size_t active() const = 0;
  virtual bool knows(pd::transfer_id id) const = 0;  // begun and not yet released
  virtual std::int32_t layers() const = 0;
  bool broken = false;  // a copy failed in the transport: new transfers use a new link
};

template <class Transport>
class pd_link_of final : public pd_link {
 public:
  // Declared before the sender: the sender goes first, after the copies it waits for.
  template <class... Args>
  pd_link_of(std::function<void(pd::message const&)> to_decode, pd::transfer_config const& config,
             Args&&... args)
      : transport_(std::forward<Args>(args)...),
        sender_(transport_, std::move(to_decode), config) {}

  void begin(pd::allocate_response const& r, std::span<std::int32_t const> slots,
             release_fn release) override {
    sender_.begin(r, slots, std::move(release));
  }
  bool send_layer(pd::transfer_id id, std::int32_t layer) override {
    return sender_.send_layer(id, layer);
  }
  bool cancel(pd::transfer_id id, std::string text) override {
    return sender_.cancel(id, pd::failure::cancelled, std::move(text));
  }
  void handle(pd::message const& m) override { sender_.handle(m); }
  std::vector<pd::sender_event> poll() override { return sender_.poll(); }
  std::size_t active() const override { return sender_.active(); }
  bool knows(pd::transfer_id id) const override { return sender_.status(id).has_value(); }
  std::int32_t layers() const override { return transport_.layout().layers; }

 private:
  Transport transport_;
  pd::kv_sender<Transport> sender_;
};

#if defined(LIGHTCORE_WITH_CUDA)
// The CUDA IPC transport with the imported destination layers it points into.
struct pd_ipc_transport {
  pd_ipc_transport(std::vector<tensor_view> src, std::vector<pd::ipc_layer> const& dst,
                   cudaStream_t compute)
      : imported(dst, src.at(0).size(1), src.at(0).type()),
        transport(std::move(src), imported, compute, &kernels::copy_rows_on_stream) {}
  pd::kv_layout layout() const noexcept { return transport.layout(); }
  std::int64_t source_slots() const noexcept { return transport.source_slots(); }
  std::int64_t destination_slots() const noexcept { return transport.destination_slots(); }
  void submit(pd::layer_copy job) { transport.submit(std::move(job)); }
  pd::imported_layers imported;
  pd::cuda_ipc_transport transport;
};
#endif

struct pd_role_options {
  std::string control_url;                    // this engine's control endpoint, as peers reach it
  std::string kv_host = "127.0.0.1";          // decode: the TCP KV server's address (bound, told)
  int kv_port = 0;                            // decode: its port; 0: any free port
  std::chrono::milliseconds timeout{30'000};  // a transfer's whole budget; default 30 s
  // prefill (CUDA): how KV reaches a decode instance: "ipc" (CUDA IPC, same node only), "nccl"
  // (NCCL send/recv, any GPU NCCL reaches; needs an NCCL build on both sides) or "auto" (default:
  // CUDA IPC on the same node, NCCL otherwise)
  std::string transport = "auto";
  // decode: a landed transfer nobody asked to decode is freed after this long; default 60 s
  std::chrono::milliseconds claim_timeout{60'000};
};

template <Backend B, class Engine>
class pd_prefill final : public pd_node, public engine::kv_stream_observer {
 public:
  pd_prefill(Engine& eng, typename B::stream_type const& compute, pd_outbox& outbox,
             pd_inbox& inbox, pd_role_options options)
      : eng_(&eng), compute_(&compute), outbox_(&outbox), inbox_(&inbox), o_(std::move(options)) {}
  ~pd_prefill() override {
    if constexpr (Engine::streams_kv) eng_->set_kv_stream_observer(nullptr);
  }

  // The step about to run completes these prompts: their transfers begin now, from the slots the
  // forward is about to fill.
  void before_forward(std::span<engine::kv_stream_start const> starts) override {
    streaming_.clear();
    for (engine::kv_stream_start const& s : starts) {
      auto it = jobs_.find(s.id);
      if (it == jobs_.end()) continue;
      job& j = it->second;
      try {
        // A link retired since (its connection broke) is no longer polled: nothing may begin on it.
        LC_CHECK(!j.link->broken, "the connection to the decode instance broke");
        std::uint64_t const eid = s.id;
        j.link->begin(j.alloc, s.kv.slots,
                      [this, eid](std::span<std::int32_t const>) { transfer_ended(eid); });
        j.begun = true;
        transfers_[j.request_id] = {j.link, j.alloc.id};
        streaming_.push_back({j.link, j.alloc.id});
        ++transfer_stats_.streamed;
        timing_[j.request_id] = {clock::now(), {}, transfer_bytes(j)};
      } catch (std::exception const& e) {
        j.begin_error = e.what();
      }
    }
  }
  // Layer `layer` of those prompts is written in stream order: its copy is queued behind it.
  void after_layer(std::int64_t layer) override {
    for (transfer const& t : streaming_) {
      try {
        t.link->send_layer(t.id, std::int32_t(layer));  // false once the transfer failed
      } catch (std::exception const&) {
        // Cancelled by this side meanwhile: nothing more to send.
      }
    }
  }

  bool busy() const override {
    if (!jobs_.empty() || !transfers_.empty() || !retired_.empty() || !ended_.empty()) return true;
    for (auto const& [url, l] : links_)
      if (l->active() > 0) return true;
    return false;
  }

  void poll() override {
    for (auto it = links_.begin(); it != links_.end();) {
      settle(*it->second);
      if (it->second->broken) {  // polled on until its transfers have ended
        retired_.emplace_back(it->first, it->second);
        it = links_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = retired_.begin(); it != retired_.end();) {
      settle(*it->second);
      it = it->second->active() == 0 ? retired_.erase(it) : std::next(it);
    }
    std::int64_t queued = 0;
    for (auto const& [id, j] : jobs_) queued += j.prompt_len;
    pd_load l = transfer_stats_;
    l.queued_tokens = queued;
    l.transfers = std::int64_t(transfers_.size());
    publish_load(*eng_, l);
  }

  bool on_token(engine::token_event const& t) override {
    if ((t.id & pd_id_bit) == 0) return false;
    auto it = jobs_.find(t.id);
    if (it == jobs_.end()) return true;
    job j = std::move(it->second);
    jobs_.erase(it);
    by_request_.erase(j.request_id);
    pd_token tok = pd_token_of(t);
    // The engine ends every prefill request after one token (length); the request itself ends
    // only by a stop id or when it asked for one token.
    if (tok.finished == "length" && j.max_new_tokens > 1) tok.finished = "none";
    j.reply->push(to_json(tok).dump());
    j.reply->close();
    if (tok.finished != "none") {
      // Nothing to decode: the KV goes to the prefix cache, the allocation is given back.
      if (j.begun) {
        // The transfer's end (the cancel, once no copy is in flight) gives the KV back.
        // A transfer that already landed cannot be cancelled: D is told to drop it.
        if (!j.link->cancel(j.alloc.id, "the request ended with its first token"))
          abort_allocation(j, "the request ended with its first token");
        if (ended_.erase(t.id) != 0) eng_->release_held(t.id);
        return true;
      }
      eng_->release_held(t.id);
      abort_allocation(j, "the request ended with its first token");
      return true;
    }
    if (auto tm = timing_.find(j.request_id); tm != timing_.end()) tm->second.token = clock::now();
    if (j.begun) {
      // Streamed during the step. Its pins go back when the transfer has ended and the request
      // holds its KV, whichever comes last.
      if (ended_.erase(t.id) != 0) eng_->release_held(t.id);
      return true;
    }
    if (!j.begin_error.empty()) {
      eng_->release_held(t.id);
      abort_allocation(j, "the transfer could not begin: " + j.begin_error);
      return true;
    }
    auto const held = eng_->held(t.id);
    try {
      LC_CHECK(held.has_value(), "the engine holds no KV for request " << j.request_id);
      // A link retired since (its connection broke) is no longer polled: nothing may begin on it.
      LC_CHECK(!j.link->broken, "the connection to the decode instance broke");
      std::uint64_t const eid = t.id;
      j.link->begin(j.alloc, held->slots,
                    [this, eid](std::span<std::int32_t const>) { eng_->release_held(eid); });
      auto const now = clock::now();
      timing_[j.request_id] = {now, now, transfer_bytes(j)};
    } catch (std::exception const& e) {
      eng_->release_held(t.id);
      abort_allocation(j, std::string("the transfer could not begin: ") + e.what());
      return true;
    }
    // Every layer at once: the prefill step has written them all (no layer-by-layer overlap).
    for (std::int32_t l = 0; l < j.link->layers(); ++l)
      if (!j.link->send_layer(j.alloc.id, l)) break;
    transfers_[j.request_id] = {j.link, j.alloc.id};
    return true;
  }

 protected:
  void role_routes(httplib::Server& s) override {
    s.Post("/pd/prefill", [this](httplib::Request const& req, httplib::Response& res) {
      auto reply = std::make_shared<pd_reply>();
      std::shared_ptr<request> r;
      try {
        r = std::make_shared<request>(parse_request(nlohmann::json::parse(req.body)));
      } catch (std::exception const& e) {
        return reply_json_error(res, 400, e.what(), "bad_request");
      }
      inbox_->post([this, r, reply] { start(*r, reply); });
      single_reply(res, reply, std::chrono::minutes(10));
    });
    s.Post("/pd/cancel", [this](httplib::Request const& req, httplib::Response& res) {
      auto const j = nlohmann::json::parse(req.body, nullptr, false);
      if (!j.is_object() || !j.contains("request_id") || !j.at("request_id").is_number_unsigned())
        return reply_json_error(res, 400, "the body must be {\"request_id\": <uint64>}",
                                "bad_request");
      std::uint64_t const id = j.at("request_id").get<std::uint64_t>();
      inbox_->post([this, id] { cancel(id); });
      res.set_content(R"({"ok":true})", "application/json");
    });
    s.Post("/pd/message", [this](httplib::Request const& req, httplib::Response& res) {
      std::string const from = req.get_param_value("from");
      std::vector<pd::message> ms;
      try {
        ms = parse_message_batch(req.body);
        for (pd::message const& m : ms)
          LC_CHECK(std::holds_alternative<pd::transfer_abort>(m),
                   "a prefill instance takes only abort messages");
      } catch (std::exception const& e) {
        return reply_json_error(res, 400, e.what(), "bad_request");
      }
      inbox_->post([this, from, ms = std::move(ms)] {
        for (pd::message const& m : ms) {
          // The link that holds the transfer (a retired one's are still ending), else the current
          // one, which acknowledges an abort for a transfer it no longer knows.
          auto const id = std::get<pd::transfer_abort>(m).id;
          bool handled = false;
          for (auto& [url, l] : retired_)
            if (!handled && url == from && l->knows(id)) {
              l->handle(m);
              handled = true;
            }
          if (!handled)
            if (auto it = links_.find(from); it != links_.end()) it->second->handle(m);
        }
      });
      res.set_content("{}", "application/json");
    });
  }

  nlohmann::json info() const override {
    auto const& c = eng_->pool().config();
    return {{"role", "prefill"},
            {"control", o_.control_url},
            {"node", pd_node_name()},
            {"device", B::kind == device_kind::cpu ? "cpu" : "cuda"},
            {"layout", {{"layers", c.layers}, {"width", c.width}, {"dtype", name_of(c.type)}}}};
  }

 private:
  // POST /pd/prefill's body.
  struct request {
    std::uint64_t request_id = 0;
    std::vector<std::int32_t> tokens;
    wire_params params;
    pd::allocate_response alloc;
    std::string decode_url;           // the decode instance's control endpoint
    nlohmann::json decode = nullptr;  // its /pd/info: kv, ipc, node
  };
  struct job {
    std::uint64_t request_id = 0;
    std::int64_t prompt_len = 0;
    std::int32_t max_new_tokens = 1;
    pd::allocate_response alloc;
    std::string decode_url;
    std::shared_ptr<pd_link> link;
    std::shared_ptr<pd_reply> reply;
    bool begun = false;       // its transfer began before the forward (kv_stream_observer)
    std::string begin_error;  // why that begin failed; empty: it did not
  };
  struct transfer {
    std::shared_ptr<pd_link> link;
    pd::transfer_id id = 0;
  };

  static request parse_request(nlohmann::json const& j) {
    LC_CHECK(j.is_object(), "the body must be a JSON object");
    request r;
    LC_CHECK(j.contains("request_id") && j.at("request_id").is_number_unsigned(),
             "'request_id' must be an unsigned 64-bit integer");
    r.request_id = j.at("request_id").get<std::uint64_t>();
    r.tokens = tokens_from_json(j, "tokens");
    LC_CHECK(j.contains("params"), "'params' is missing");
    r.params = params_from_json(j.at("params"));
    LC_CHECK(j.contains("allocation"),
             "'allocation' (the decode side's allocate_result) is missing");
    auto m = pd::parse_message(j.at("allocation"));
    LC_CHECK(std::holds_alternative<pd::allocate_response>(m),
             "'allocation' must be an allocate_result message");
    r.alloc = std::get<pd::allocate_response>(std::move(m));
    LC_CHECK(r.alloc.accepted, "'allocation' is a refusal; only an accepted one can be sent to");
    LC_CHECK(j.contains("decode") && j.at("decode").is_object() &&
                 j.at("decode").contains("control") && j.at("decode").at("control").is_string(),
             "'decode' must be the decode instance's /pd/info (with its 'control' address)");
    r.decode = j.at("decode");
    r.decode_url = r.decode.at("control").template get<std::string>();
    return r;
  }

  void start(request const& r, std::shared_ptr<pd_reply> const& reply) {
    job j;
    j.request_id = r.request_id;
    j.prompt_len = std::int64_t(r.tokens.size());
    j.max_new_tokens = r.params.max_new_tokens;
    j.alloc = r.alloc;
    j.decode_url = r.decode_url;
    j.reply = reply;
    auto fail = [&](int status, std::string const& text, char const* code) {
      reply->push(nlohmann::json{{"status", status}, {"error", {{"message", text}, {"code", code}}}}
                      .dump());
      reply->close();
      abort_allocation(j, text);
    };
    if (by_request_.contains(r.request_id))
      return fail(400, "request " + std::to_string(r.request_id) + " is running already",
                  "bad_request");
    if (r.alloc.prefix_hit + std::int64_t(r.alloc.dst_slots.size()) != j.prompt_len)
      return fail(400,
                  "the allocation covers " + std::to_string(r.alloc.prefix_hit) + " cached + " +
                      std::to_string(r.alloc.dst_slots.size()) + " new tokens; the prompt has " +
                      std::to_string(j.prompt_len),
                  "bad_request");
    try {
      j.link = link_for(r.decode_url, r.decode);
    } catch (std::exception const& e) {
      return fail(502, std::string("cannot reach the decode instance's KV: ") + e.what(),
                  "transport");
    }
    std::uint64_t const eid = pd_id_bit | ++next_id_;
    engine::request<typename Engine::params_type> er;
    er.id = eid;
    er.prompt = r.tokens;
    er.sampling = r.params.sampling;
    er.max_new_tokens = 1;
    er.stop_token_ids.assign(r.params.stop_ids, r.params.stop_ids + r.params.stop_count);
    er.hold_kv = true;
    try {
      eng_->submit(std::move(er));
    } catch (std::exception const& e) {
      return fail(400, e.what(), "bad_request");
    }
    by_request_[r.request_id] = eid;
    jobs_.emplace(eid, std::move(j));
  }

  void cancel(std::uint64_t request_id) {
    if (auto it = by_request_.find(request_id); it != by_request_.end()) {
      std::uint64_t const eid = it->second;
      by_request_.erase(it);
      auto jt = jobs_.find(eid);
      eng_->abort(eid);
      jt->second.reply->push(nlohmann::json{
          {"status", 499}, {"error", {{"message", "cancelled"}, {"code", "cancelled"}}}}
                                 .dump());
      jt->second.reply->close();
      if (jt->second.begun)
        jt->second.link->cancel(jt->second.alloc.id, "the request was cancelled");
      else
        abort_allocation(jt->second, "the request was cancelled");
      ended_.erase(eid);
      jobs_.erase(jt);
      return;
    }
    if (auto it = transfers_.find(request_id); it != transfers_.end())
      it->second.link->cancel(it->second.id, "the request was cancelled");
  }

  // A streamed transfer ended (landed, failed or cancelled) and nothing reads its slots any more.
  // The engine holds the prompt's KV only once the step has been collected: until then the
  // release waits for the token.
  void transfer_ended(std::uint64_t eid) {
    if (eng_->release_held(eid)) return;
    if (jobs_.contains(eid)) ended_.insert(eid);  // aborted requests hold nothing: nothing to do
  }

  // The bytes a transfer moves: the rows D does not hold, in every layer.
  std::int64_t transfer_bytes(job const& j) const {
    auto const& c = eng_->pool().config();
    return std::int64_t(j.alloc.dst_slots.size()) * c.layers * c.width *
           std::int64_t(size_of(c.type));
  }

  // Tells the decode side that nothing will be written into its allocation (P never began).
  void abort_allocation(job const& j, std::string const& text) {
    if (!j.alloc.accepted) return;
    pd::transfer_abort const a{j.alloc.id, pd::failure::cancelled, pd::side::prefill, text, false};
    outbox_->post_message(j.decode_url, "/pd/message?from=" + o_.control_url,
                          pd::to_json(pd::message(a)).dump());
  }

  // A link's ended transfers: pins released by its poll(); forget them here.
  void settle(pd_link& l) {
    for (pd::sender_event const& e : l.poll()) {
      if (auto it = transfers_.find(e.request_id); it != transfers_.end() && it->second.id == e.id)
        transfers_.erase(it);
      if (auto tm = timing_.find(e.request_id); tm != timing_.end()) {
        if (e.landed) {
          auto const now = clock::now();
          transfer_timing const& t = tm->second;
          ++transfer_stats_.transfers_ended;
          transfer_stats_.transfer_bytes += t.bytes;
          transfer_stats_.transfer_seconds += std::chrono::duration<double>(now - t.begun).count();
          if (t.token != clock::time_point{} && now > t.token)
            transfer_stats_.transfer_after_token_seconds +=
                std::chrono::duration<double>(now - t.token).count();
        }
        timing_.erase(tm);
      }
      if (!e.landed && e.error.reason == pd::failure::transport) l.broken = true;
    }
  }

  std::shared_ptr<pd_link> link_for(std::string const& url, nlohmann::json const& decode) {
    if (auto it = links_.find(url); it != links_.end() && !it->second->broken) return it->second;
    if (auto it = links_.find(url); it != links_.end()) {
      retired_.emplace_back(it->first, it->second);
      links_.erase(it);
    }
    auto sink = [this, url](pd::message const& m) {
      outbox_->post_message(url, "/pd/message?from=" + o_.control_url, pd::to_json(m).dump());
    };
    pd::transfer_config cfg;
    cfg.timeout = o_.timeout;
    std::shared_ptr<pd_link> l;
    if constexpr (B::kind == device_kind::cpu) {
      LC_CHECK(decode.contains("kv") && decode.at("kv").is_string(),
               "the decode instance offers no TCP KV endpoint (its pool is not on the host); a "
               "CPU prefill instance needs one");
      std::string const kv = decode.at("kv").get<std::string>();
      http_endpoint const e = parse_http_url("http://" + kv);
      l = std::make_shared<pd_link_of<pd::tcp_transport>>(
          std::move(sink), cfg, eng_->kv_pool().layers(), e.host, std::uint16_t(e.port));
    } else {
#if defined(LIGHTCORE_WITH_CUDA)
      bool const same_node = decode.contains("ipc") && decode.at("ipc").is_array() &&
                             decode.value("node", std::string()) == pd_node_name();
      if (o_.transport == "nccl" || (o_.transport == "auto" && !same_node)) {
#if defined(LIGHTCORE_WITH_NCCL)
        LC_CHECK(decode.value("nccl", false),
                 "the decode instance offers no NCCL link (it was built without NCCL)");
        ncclUniqueId const id = open_nccl_link(url);
        // Blocks until the decode side has joined (it does so as it answers) and the hellos
        // passed: once per decode instance, on the first transfer to it.
        l = std::make_shared<pd_link_of<pd::nccl_transport>>(
            std::move(sink), cfg, eng_->kv_pool().layers(), id, compute_->get());
#else
        LC_THROW(
            "this prefill instance was built without NCCL; it sends KV over CUDA IPC to a "
            "decode instance on its own node ("
            << pd_node_name() << ") only");
#endif
      } else {
        LC_CHECK(same_node, "the decode instance offers no CUDA IPC handles on this node ("
                                << pd_node_name()
                                << "); CUDA IPC works within one node only (--pd-transport nccl "
                                   "or auto reaches other nodes)");
        std::vector<pd::ipc_layer> dst;
        for (auto const& h : decode.at("ipc")) dst.push_back(ipc_layer_from_hex(h));
        l = std::make_shared<pd_link_of<pd_ipc_transport>>(
            std::move(sink), cfg, eng_->kv_pool().layers(), dst, compute_->get());
      }
#endif
    }
    LC_CHECK(l != nullptr, "no KV transport for this pool");
    links_[url] = l;
    return l;
  }

#if defined(LIGHTCORE_WITH_NCCL)
  // Asks the decode instance at `url` (its control endpoint) for an NCCL link: it makes the
  // unique id, starts joining as rank 1 and answers with the id in hex.
  ncclUniqueId open_nccl_link(std::string const& url) const {
    http_endpoint const e = parse_http_url(url);
    httplib::Client c(e.host, e.port);
    c.set_connection_timeout(std::chrono::seconds(2));
    c.set_read_timeout(std::chrono::seconds(10));
    auto const r = c.Post("/pd/nccl_link", nlohmann::json{{"from", o_.control_url}}.dump(),
                          "application/json");
    LC_CHECK(r && r->status == 200, "the decode instance "
                                        << url << " opened no NCCL link: "
                                        << (r ? r->body : httplib::to_string(r.error())));
    auto const j = nlohmann::json::parse(r->body, nullptr, false);
    LC_CHECK(j.is_object() && j.contains("nccl_id") && j.at("nccl_id").is_string(),
             "the decode instance " << url << " answered /pd/nccl_link without an nccl_id");
    pd::nccl_id_bytes const bytes = pd::nccl_id_from_hex(j.at("nccl_id").get<std::string>());
    ncclUniqueId id;
    static_assert(sizeof id == sizeof bytes);
    std::memcpy(&id, bytes.data(), sizeof id);
    return id;
  }
#endif

#if defined(LIGHTCORE_WITH_CUDA)
  static pd::ipc_layer ipc_layer_from_hex(nlohmann::json const& h) {
    LC_CHECK(h.is_object() && h.contains("handle") && h.contains("slots"),
             "an ipc entry must be {\"handle\": hex, \"slots\": n}");
    std::string const hex = h.at("handle").get<std::string>();
    pd::ipc_layer out;
    LC_CHECK(hex.size() == 2 * out.handle.size(),
             "an IPC handle of " << hex.size() / 2 << " bytes; expected " << out.handle.size());
    for (std::size_t i = 0; i < out.handle.size(); ++i)
      out.handle[i] = char(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    out.slots = h.at("slots").get<std::int64_t>();
    return out;
  }
#endif

  Engine* eng_;
  typename B::stream_type const* compute_;
  pd_outbox* outbox_;
  pd_inbox* inbox_;
  pd_role_options o_;
  std::uint64_t next_id_ = 0;
  using clock = std::chrono::steady_clock;
  struct transfer_timing {
    clock::time_point begun{}, token{};  // token: unset until the first token is collected
    std::int64_t bytes = 0;
  };
  std::unordered_map<std::uint64_t, transfer_timing> timing_;    // by router id, until it ends
  pd_load transfer_stats_;                                       // the transfer fields of /pd/load
  std::unordered_map<std::uint64_t, job> jobs_;                  // by engine id, until token 0
  std::unordered_map<std::uint64_t, std::uint64_t> by_request_;  // router id -> engine id
  std::unordered_map<std::uint64_t, transfer> transfers_;        // by router id
  std::vector<transfer> streaming_;          // transfers of the step being issued (after_layer)
  std::unordered_set<std::uint64_t> ended_;  // engine ids: streamed transfer over, token not in
  std::unordered_map<std::string, std::shared_ptr<pd_link>> links_;  // by decode control url
  // Broken links (by decode control url) whose transfers are still ending.
  std::vector<std::pair<std::string, std::shared_ptr<pd_link>>> retired_;
};

}  // namespace lightcore::server
