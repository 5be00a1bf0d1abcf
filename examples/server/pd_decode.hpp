// The decode role of an engine process: POST /pd/allocate reserves slots for a prompt's KV past
// this instance's prefix hit (kv_receiver), POST /pd/message takes the prefill side's layer,
// done and abort messages, and POST /pd/decode waits for the transfer to land, adopts the
// request into the engine with the first token the prefill side sampled, and streams the rest
// of its tokens back as newline-ended JSON. The KV bytes arrive through a tcp_kv_server (host
// pool), are written by the prefill process through CUDA IPC (device pool, same node), or arrive
// through an nccl_kv_server (device pool, any GPU NCCL reaches) that POST /pd/nccl_link opens
// for a prefill instance.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "lightcore/pd/kv_receiver.hpp"
#include "lightcore/pd/messages.hpp"
#include "lightcore/pd/tcp_transport.hpp"
#include "pd_prefill.hpp"  // pd_role_options, pd_node_name
#if defined(LIGHTCORE_WITH_CUDA)
#include "lightcore/pd/cuda_ipc_transport.hpp"
#endif
#if defined(LIGHTCORE_WITH_NCCL)
#include <nccl.h>

#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "lightcore/pd/nccl_framing.hpp"
#include "lightcore/pd/nccl_transport.hpp"
#endif

namespace lightcore::server {

template <Backend B, class Engine>
class pd_decode final : public pd_node {
 public:
  pd_decode(Engine& eng, pd_outbox& outbox, pd_inbox& inbox, pd_role_options options)
      : eng_(&eng),
        outbox_(&outbox),
        inbox_(&inbox),
        o_(std::move(options)),
        rx_(
            eng.kv_pool(), eng.prefix_cache(), [this](pd::message const& m) { to_prefill(m); },
            pd::transfer_config{o_.timeout, std::chrono::milliseconds(5'000)}) {
    http_endpoint const self = parse_http_url(o_.control_url);
    if constexpr (B::kind == device_kind::cpu) {
      kv_server_ = std::make_unique<pd::tcp_kv_server>(eng.kv_pool().layers(), o_.kv_host,
                                                       std::uint16_t(o_.kv_port));
      kv_address_ = self.host + ":" + std::to_string(kv_server_->port());
    } else {
#if defined(LIGHTCORE_WITH_CUDA)
      for (pd::ipc_layer const& l : pd::export_layers(eng.kv_pool().layers())) {
        std::string hex;
        char buf[3];
        for (char const c : l.handle) {
          std::snprintf(buf, sizeof buf, "%02x", unsigned(static_cast<unsigned char>(c)));
          hex += buf;
        }
        ipc_.push_back({{"handle", hex}, {"slots", l.slots}});
      }
#endif
    }
  }

  std::string const& kv_address() const noexcept { return kv_address_; }

  bool busy() const override {
    return !waiting_.empty() || !landed_.empty() || !running_.empty() || rx_.active() > 0;
  }

  void poll() override {
    auto const now = pd::clock::now();
    for (pd::receiver_event const& e : rx_.poll(now)) {
      if (e.landed) {
        landed_[e.id] = now;
      } else {
        failed_[e.id] = {e.error, now};
        std::lock_guard g(reply_to_m_);
        reply_to_.erase(e.id);
      }
    }
    for (auto it = waiting_.begin(); it != waiting_.end();)
      it = settle(it->second, now) ? waiting_.erase(it) : std::next(it);
    // Landed and never asked for (the router went away): given back.
    for (auto it = landed_.begin(); it != landed_.end();) {
      if (now - it->second > o_.claim_timeout && !waiting_.contains(it->first)) {
        rx_.cancel(it->first, pd::failure::timeout, "landed but never claimed by a decode request");
        it = landed_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = failed_.begin(); it != failed_.end();)
      it = now - it->second.at > std::chrono::minutes(1) ? failed_.erase(it) : std::next(it);
    for (auto it = running_.begin(); it != running_.end();) {
      if (it->second->abandoned()) {  // the router went away: the engine frees the request
        eng_->abort(it->first);
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    std::int64_t queued = 0;  // prompts whose decoding has not begun
    for (auto const& [id, w] : waiting_) queued += std::int64_t(w.tokens.size());
    pd_load l;
    l.queued_tokens = queued;
    l.transfers = std::int64_t(rx_.active());
    publish_load(*eng_, l);
  }

  bool on_token(engine::token_event const& t) override {
    if ((t.id & pd_id_bit) == 0) return false;
    auto it = running_.find(t.id);
    if (it == running_.end()) return true;
    it->second->push(to_json(pd_token_of(t)).dump());
    if (t.finished != engine::finish_reason::none) {
      it->second->close();
      running_.erase(it);
    }
    return true;
  }

 protected:
  void role_routes(httplib::Server& s) override {
    s.Post("/pd/allocate", [this](httplib::Request const& req, httplib::Response& res) {
      std::shared_ptr<pd::allocate_request> a;
      std::string reply_to;
      try {
        auto const j = nlohmann::json::parse(req.body);
        auto m = pd::parse_message(j);
        LC_CHECK(std::holds_alternative<pd::allocate_request>(m),
                 "POST /pd/allocate takes an allocate message");
        LC_CHECK(j.contains("reply_to") && j.at("reply_to").is_string(),
                 "'reply_to' (the prefill instance's control address) is missing");
        reply_to = j.at("reply_to").get<std::string>();
        parse_http_url(reply_to);
        a = std::make_shared<pd::allocate_request>(std::get<pd::allocate_request>(std::move(m)));
      } catch (std::exception const& e) {
        return reply_json_error(res, 400, e.what(), "bad_request");
      }
      auto reply = std::make_shared<pd_reply>();
      inbox_->post([this, a, reply_to, reply] {
        pd::allocate_response const r = rx_.allocate(*a);
        if (r.accepted) {
          std::lock_guard g(reply_to_m_);
          reply_to_[r.id] = reply_to;
        }
        reply->push(pd::to_json(pd::message(r)).dump());
        reply->close();
      });
      single_reply(res, reply, std::chrono::seconds(30));
    });
#if defined(LIGHTCORE_WITH_NCCL)
    if constexpr (B::kind == device_kind::cuda) {
      // A prefill instance asks for an NCCL link: a fresh unique id, joined here as rank 1 on a
      // thread of its own (the join blocks until the prefill side joins as rank 0 with the id it
      // gets in the answer). A later request from the same instance replaces its link.
      s.Post("/pd/nccl_link", [this](httplib::Request const& req, httplib::Response& res) {
        std::string from;
        try {
          auto const j = nlohmann::json::parse(req.body);
          LC_CHECK(j.is_object() && j.contains("from") && j.at("from").is_string(),
                   "POST /pd/nccl_link takes {\"from\": the prefill instance's control URL}");
          from = j.at("from").get<std::string>();
          parse_http_url(from);
        } catch (std::exception const& e) {
          return reply_json_error(res, 400, e.what(), "bad_request");
        }
        ncclUniqueId id;
        if (ncclResult_t const r = ncclGetUniqueId(&id); r != ncclSuccess)
          return reply_json_error(
              res, 500, std::string("ncclGetUniqueId: ") + ncclGetErrorString(r), "transport");
        pd::nccl_id_bytes bytes;
        static_assert(sizeof id == sizeof bytes);
        std::memcpy(bytes.data(), &id, sizeof id);
        // The joining thread owns what it touches (it may outlive this role if the prefill side
        // never joins); the process's exit ends it.
        std::thread([links = nccl_links_, layers = eng_->kv_pool().layers(), id, from] {
          try {
            auto server = std::make_shared<pd::nccl_kv_server>(layers, id);
            std::lock_guard g(links->m);
            links->by_prefill[from] = std::move(server);
          } catch (std::exception const& e) {
            std::fprintf(stderr, "lightcore_server: NCCL link from %s failed: %s\n", from.c_str(),
                         e.what());
          }
        }).detach();
        res.set_content(nlohmann::json{{"nccl_id", pd::nccl_id_to_hex(bytes)}}.dump(),
                        "application/json");
      });
    }
#endif
    s.Post("/pd/message", [this](httplib::Request const& req, httplib::Response& res) {
      try {
        for (pd::message const& m : parse_message_batch(req.body)) rx_.handle(m);
      } catch (std::exception const& e) {
        return reply_json_error(res, 400, e.what(), "bad_request");
      }
      res.set_content("{}", "application/json");
    });
    s.Post("/pd/decode", [this](httplib::Request const& req, httplib::Response& res) {
      auto w = std::make_shared<waiting>();
      try {
        auto const j = nlohmann::json::parse(req.body);
        LC_CHECK(
            j.is_object() && j.contains("transfer_id") && j.at("transfer_id").is_number_unsigned(),
            "'transfer_id' must be an unsigned 64-bit integer");
        w->transfer = j.at("transfer_id").get<pd::transfer_id>();
        w->tokens = tokens_from_json(j, "tokens");
        LC_CHECK(j.contains("first_token") && j.at("first_token").is_number_integer() &&
                     j.at("first_token").get<std::int64_t>() >= 0,
                 "'first_token' must be a token id");
        w->first = j.at("first_token").get<std::int32_t>();
        LC_CHECK(j.contains("params"), "'params' is missing");
        w->params = params_from_json(j.at("params"));
        LC_CHECK(w->params.max_new_tokens >= 2,
                 "params.max_new_tokens = " << w->params.max_new_tokens
                                            << "; a decode request counts the first token, so "
                                               "allowed: >= 2");
      } catch (std::exception const& e) {
        return reply_json_error(res, 400, e.what(), "bad_request");
      }
      auto reply = std::make_shared<pd_reply>();
      w->reply = reply;
      // A backstop only: the transfer's own deadline (the receiver's) fails it first, and its
      // failure ends this request with the reason.
      w->deadline = pd::clock::now() + 2 * o_.timeout + std::chrono::seconds(10);
      inbox_->post([this, w] {
        if (waiting_.contains(w->transfer))
          return fail(*w, 409,
                      "transfer " + std::to_string(w->transfer) + " has a decode request already",
                      "duplicate");
        waiting_.emplace(w->transfer, std::move(*w));
      });
      stream_reply(res, std::move(reply));
    });
  }

  nlohmann::json info() const override {
    auto const& c = eng_->pool().config();
    nlohmann::json j = {
        {"role", "decode"},
        {"control", o_.control_url},
        {"node", pd_node_name()},
        {"device", B::kind == device_kind::cpu ? "cpu" : "cuda"},
        {"layout", {{"layers", c.layers}, {"width", c.width}, {"dtype", name_of(c.type)}}}};
    if (!kv_address_.empty()) j["kv"] = kv_address_;
    if (!ipc_.empty()) j["ipc"] = ipc_;
#if defined(LIGHTCORE_WITH_NCCL)
    if constexpr (B::kind == device_kind::cuda) j["nccl"] = true;
#endif
    return j;
  }

 private:
  struct waiting {
    pd::transfer_id transfer = 0;
    std::vector<std::int32_t> tokens;
    std::int32_t first = 0;
    wire_params params;
    std::shared_ptr<pd_reply> reply;
    pd::clock::time_point deadline;
  };
  struct failure_record {
    pd::transfer_error error;
    pd::clock::time_point at;
  };

  static void fail(waiting& w, int status, std::string const& text, std::string const& code) {
    w.reply->push(
        nlohmann::json{{"status", status}, {"error", {{"message", text}, {"code", code}}}}.dump());
    w.reply->close();
  }

  // A waiting decode request: adopted once its transfer has landed, failed when the transfer
  // failed or is unknown, given up at its deadline. True when it is settled either way.
  bool settle(waiting& w, pd::clock::time_point now) {
    if (w.reply->abandoned()) {
      rx_.cancel(w.transfer, pd::failure::cancelled, "the decode request went away");
      landed_.erase(w.transfer);
      return true;
    }
    if (auto f = failed_.find(w.transfer); f != failed_.end()) {
      fail(w, 502,
           "the KV transfer failed (" + std::string(pd::name_of(f->second.error.reason)) +
               ", decided by the " + std::string(pd::name_of(f->second.error.origin)) +
               " side): " + f->second.error.message,
           std::string(pd::name_of(f->second.error.reason)));
      return true;
    }
    if (landed_.contains(w.transfer)) {
      // Every req_to_token row taken (the engine runs its maximum): the KV waits here, landed,
      // until a request ends and frees one.
      auto const& rows = eng_->pool().table();
      if (rows.rows_held() >= rows.rows() && now < w.deadline) return false;
      landed_.erase(w.transfer);
      adopt(w);
      return true;
    }
    auto const st = rx_.status(w.transfer);
    if (!st) {
      fail(w, 404, "no transfer " + std::to_string(w.transfer) + " on this decode instance",
           "unknown_transfer");
      return true;
    }
    if (now >= w.deadline) {
      rx_.cancel(w.transfer, pd::failure::timeout, "the KV did not land in time");
      fail(w, 504,
           "timeout: the KV of transfer " + std::to_string(w.transfer) + " did not land in time",
           "timeout");
      return true;
    }
    return false;
  }

  void adopt(waiting& w) {
    pd::landed_kv kv = rx_.take(w.transfer);
    {
      std::lock_guard g(reply_to_m_);
      reply_to_.erase(w.transfer);
    }
    auto* prefix = eng_->prefix_cache();
    // The receiver locks the matched node even for an empty match (the root); the engine takes
    // a lock only with a hit.
    if (kv.prefix_hit == 0 && kv.prefix_node && prefix != nullptr) {
      prefix->unlock(*kv.prefix_node);
      kv.prefix_node.reset();
    }
    std::uint64_t const eid = pd_id_bit | ++next_id_;
    try {
      LC_CHECK(kv.tokens == w.tokens,
               "the decode request's prompt differs from the tokens "
               "whose KV landed in transfer "
                   << w.transfer);
      engine::request<typename Engine::params_type> r;
      r.id = eid;
      r.prompt = w.tokens;
      r.sampling = w.params.sampling;
      r.max_new_tokens = w.params.max_new_tokens;
      r.stop_token_ids.assign(w.params.stop_ids, w.params.stop_ids + w.params.stop_count);
      eng_->adopt(std::move(r), w.first,
                  engine::adopted_kv{kv.slots, kv.prefix_hit, kv.prefix_node});
    } catch (std::exception const& e) {
      // Not adopted: the slots and the lock are still ours to give back.
      eng_->kv_pool().slots().free(
          std::span<std::int32_t const>(kv.slots).subspan(std::size_t(kv.prefix_hit)));
      if (kv.prefix_node && prefix != nullptr) prefix->unlock(*kv.prefix_node);
      return fail(w, 400, e.what(), "bad_request");
    }
    running_.emplace(eid, w.reply);
  }

  // The receiver's messages (aborts) go to the prefill instance that asked for the transfer.
  void to_prefill(pd::message const& m) {
    auto const* a = std::get_if<pd::transfer_abort>(&m);
    if (a == nullptr) return;
    std::string url;
    {
      std::lock_guard g(reply_to_m_);
      auto it = reply_to_.find(a->id);
      if (it == reply_to_.end()) return;
      url = it->second;
    }
    outbox_->post_message(url, "/pd/message?from=" + o_.control_url, pd::to_json(m).dump());
  }

  Engine* eng_;
  pd_outbox* outbox_;
  pd_inbox* inbox_;
  pd_role_options o_;
  pd::kv_receiver<B> rx_;
  std::unique_ptr<pd::tcp_kv_server> kv_server_;
  std::string kv_address_;
  nlohmann::json ipc_ = nlohmann::json::array();
#if defined(LIGHTCORE_WITH_NCCL)
  struct nccl_links {
    std::mutex m;
    std::map<std::string, std::shared_ptr<pd::nccl_kv_server>> by_prefill;  // by control URL
  };
  std::shared_ptr<nccl_links> nccl_links_ = std::make_shared<nccl_links>();
#endif
  std::uint64_t next_id_ = 0;
  std::mutex reply_to_m_;  // the receiver's sink may run on the engine thread or a handler's
  std::unordered_map<pd::transfer_id, std::string> reply_to_;  // transfer -> prefill control url
  std::unordered_map<pd::transfer_id, waiting> waiting_;       // decode requests, by transfer
  std::unordered_map<pd::transfer_id, pd::clock::time_point> landed_;  // not yet claimed
  std::unordered_map<pd::transfer_id, failure_record> failed_;
  std::unordered_map<std::uint64_t, std::shared_ptr<pd_reply>> running_;  // by engine id
};

}  // namespace lightcore::server
