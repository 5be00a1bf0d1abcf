// The engine process of the reference server: it opens the front end's request table, loads the
// model on its device, and runs the engine loop: take submissions and aborts from the table,
// step, publish each sampled token into its request's record, and its stats into the stats
// block. It blocks on the table's futex when there is no work, and never spins. The mock engine
// (options.mock) runs no model: every step emits one token per live request (a fixed function of
// the prompt and the index, never a stop id), as fast as it can, so that the front end and the
// IPC can be measured alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lightcore::server {

struct engine_options {
  std::string table_name;            // the request table's shm name (from the front end)
  std::string stats_name;            // the engine stats block's shm name (engine_stats.hpp)
  bool mock = false;                 // run no model: one token per live request per step
  std::int64_t mock_vocab = 129280;  // tokens: the mock's ids lie in [0, mock_vocab)
  std::string device = "auto";       // "cpu", "cuda" or "auto" (cuda when a GPU is visible)
  std::filesystem::path model;       // a checkpoint directory; empty: dummy weights of config
  std::filesystem::path config;      // config.json for dummy weights
  std::string config_text;           // or its text (the built-in model)
  int ready_fd = -1;                 // written one byte once the model is loaded (then, for
                                     // the prefill and decode roles, the control port as an
                                     // int32); -1: none
  std::uint64_t seed = 0;            // dummy weights' seed
  std::int64_t kv_tokens = 0;        // token slots of the KV pool; 0: from kv_memory_fraction
                                     // on the GPU, 65536 on the CPU
  double kv_memory_fraction = 0.85;  // share of the free GPU memory after the weights
  std::int32_t max_running = 64;     // requests in one step, at most
  std::int64_t max_seq_len = 4096;   // tokens: prompt + output of one request
  std::int64_t max_tokens_per_step = 2048;  // tokens of one forward pass (chunked prefill)
  bool prefix_cache = true;
  // Prefill/decode separation (docs/pd.md, "Server roles"): "single" (default) serves the
  // request table alone; "prefill" and "decode" also run the control endpoint below.
  std::string role = "single";
  std::string control_host = "127.0.0.1";  // the control endpoint's bind address
  std::string advertise_host;              // how peers reach it; default: control_host
  int control_port = 0;                    // 0: any free port (reported through ready_fd)
  std::string kv_host = "127.0.0.1";       // decode: the TCP KV server's bind address
  int kv_port = 0;                         // decode: its port; 0: any free port
  std::int64_t pd_timeout_ms = 30'000;     // ms: a KV transfer's whole budget; default 30 s
  // prefill/decode: control endpoint handler threads; main sets it from --slots (each request in
  // flight holds one) plus room for the protocol's messages; default 288
  std::int64_t control_threads = 288;
  bool pd_stream_layers = true;  // prefill: send KV layer by layer during the forward; default on
  // prefill (CUDA): the KV transport to decode instances: auto (CUDA IPC on this node, NCCL
  // elsewhere), ipc or nccl; default auto
  std::string pd_transport = "auto";
};

// Runs until the process is told to stop (SIGTERM / SIGINT) or the loop fails; returns the exit
// status (0 after a signal, 1 after a failure, which every request in flight is told about).
int run_engine(engine_options const& options);

}  // namespace lightcore::server
