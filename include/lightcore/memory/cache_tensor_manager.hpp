// cache_tensor_manager<B>: where a forward pass gets its activations and workspaces.
//
// Modules ask for buffers by role ("attn.q", "moe.gate_up", ...) and hold them as RAII leases.
// A lease that is destroyed returns its block at once, so the buffers of layer i are reused by
// layer i+1 and the activation peak of an N-layer forward is one layer's, not N layers'.
//
// Graph mode: acquisitions inside a graph_scope come from one pool shared by every captured CUDA
// graph. Graphs replay one at a time on a stream, so their buffers may overlap; each capture lays
// its buffers out from the start of the pool, and the pool only grows when a capture needs more
// than any before it. Capture the largest batch first and the pool is sized by it alone, however
// many graphs follow. Buffers that must keep one address across every graph and every eager step
// (the logits a sampler reads, the ids copied back to the host) come from persistent(), keyed by
// role and sized by the largest request, which must come first.
//
//   memory::cache_tensor_manager<backend::cuda> mgr(gpu);
//   {
//     auto h = mgr.acquire("mlp.hidden", dtype::bf16, {tokens, 2 * inter});  // lease
//     gemm(x, w_gate_up, h.view(), stream);
//   }                                                   // h's block is free again here
//   {
//     auto scope = mgr.graph_scope("decode.bs256");     // start capturing: the pool is shared
//     forward(mgr, batch_256, stream);
//   }
//
// Not thread-safe: a manager belongs to the one host thread that runs the forward. It must
// outlive its leases (checked: destroying it with live leases terminates with a message).
#pragma once

#include <algorithm>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "lightcore/backend/backend.hpp"
#include "lightcore/core/tensor_view.hpp"
#include "lightcore/memory/arena.hpp"

namespace lightcore::memory {

struct cache_tensor_manager_config {
  std::size_t growth_bytes = std::size_t{64} << 20;        // bytes; smallest chunk taken when the
                                                           // activation arena must grow (64 MiB)
  std::size_t graph_growth_bytes = std::size_t{64} << 20;  // bytes; the same for the graph pool
  bool reuse = true;  // false: no block is reused within a forward and every graph gets its own
                      // memory (for debugging, and to show what the manager saves)
};

// Acquisitions and the largest request seen for one role.
struct role_stats {
  std::size_t acquires = 0;
  std::size_t largest_bytes = 0;
};

// One captured graph: its name and the pool bytes its buffers spanned at their peak.
struct graph_record {
  std::string name;
  std::size_t peak_bytes = 0;
};

struct cache_tensor_manager_stats {
  arena_stats activations;  // eager forwards
  arena_stats graph_pool;   // shared by every captured graph
  std::size_t persistent_bytes = 0;
  std::size_t live_leases = 0;
};

namespace detail {
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
}  // namespace detail

template <Backend B>
class cache_tensor_manager {
  enum class pool_id : std::uint8_t { activations, graph };

 public:
  using role_map =
      std::unordered_map<std::string, role_stats, detail::string_hash, std::equal_to<>>;

  // A buffer held for one role; returns its block to the manager when destroyed. Move-only.
  class lease {
   public:
    lease() = default;
    lease(lease&& o) noexcept { *this = std::move(o); }
    lease& operator=(lease&& o) noexcept {
      if (this != &o) {
        reset();
        owner_ = std::exchange(o.owner_, nullptr);
        block_ = o.block_;
        bytes_ = o.bytes_;
        pool_ = o.pool_;
        generation_ = o.generation_;
        view_ = o.view_;
      }
      return *this;
    }
    lease(lease const&) = delete;
    lease& operator=(lease const&) = delete;
    ~lease() { reset(); }

    tensor_view const& view() const noexcept { return view_; }
    operator tensor_view const&() const noexcept { return view_; }  // NOLINT: views are cheap
    void* data() const noexcept { return view_.data(); }
    template <element T, int Rank>
    typed_view<T, Rank> as() const {
      return view_.template as<T, Rank>();
    }
    // Returns the block now rather than at destruction.
    void reset() noexcept {
      if (owner_ != nullptr) owner_->release(block_, bytes_, pool_, generation_);
      owner_ = nullptr;
      view_ = {};
    }

   private:
    friend class cache_tensor_manager;
    cache_tensor_manager* owner_ = nullptr;
    std::byte* block_ = nullptr;
    std::size_t bytes_ = 0;
    pool_id pool_ = pool_id::activations;
    std::uint64_t generation_ = 0;
    tensor_view view_;
  };

  // While alive, every acquisition comes from the shared graph pool. Move-only.
  class capture_scope {
   public:
    capture_scope(capture_scope&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)) {}
    capture_scope& operator=(capture_scope&&) = delete;
    ~capture_scope() {
      if (owner_ != nullptr) owner_->end_graph();
    }

   private:
    friend class cache_tensor_manager;
    explicit capture_scope(cache_tensor_manager* m) : owner_(m) {}
    cache_tensor_manager* owner_;
  };

  explicit cache_tensor_manager(B& backend, cache_tensor_manager_config config = {})
      : backend_(&backend),
        config_(config),
        activations_(backend, config.growth_bytes),
        graph_pool_(backend, config.graph_growth_bytes) {}

  cache_tensor_manager(cache_tensor_manager const&) = delete;
  cache_tensor_manager& operator=(cache_tensor_manager const&) = delete;

  ~cache_tensor_manager() {
    if (live_leases_ != 0) {
      std::fprintf(stderr,
                   "lightcore: cache_tensor_manager destroyed with %zu live lease(s); leases must "
                   "not outlive their manager\n",
                   live_leases_);
      std::terminate();
    }
    for (persistent_entry const& p : persistent_) backend_->deallocate(p.block, p.capacity);
  }

  // A buffer of `shape` x `type` for `role`, valid until the lease is destroyed or reset.
  lease acquire(std::string_view role, dtype type, dims shape) {
    std::size_t const bytes = round_up(std::size_t(shape.product()) * size_of(type));
    note_role(role, bytes);
    lease l;
    l.pool_ = capturing_ ? pool_id::graph : pool_id::activations;
    l.generation_ = graph_generation_;
    l.bytes_ = bytes;
    if (bytes > 0) l.block_ = pool(l.pool_).allocate(bytes);
    l.view_ = tensor_view(l.block_, type, shape, backend_->where());
    l.owner_ = this;
    ++live_leases_;
    return l;
  }

  template <element T>
  lease acquire(std::string_view role, dims shape) {
    return acquire(role, dtype_v<T>, shape);
  }

  // A buffer for `role` at one address for the manager's lifetime. The first request of a role
  // fixes its capacity; later requests may be smaller (they see a prefix) but not larger.
  tensor_view persistent(std::string_view role, dtype type, dims shape) {
    std::size_t const bytes = round_up(std::size_t(shape.product()) * size_of(type));
    note_role(role, bytes);
    auto it = std::find_if(persistent_.begin(), persistent_.end(),
                           [&](persistent_entry const& p) { return p.role == role; });
    if (it == persistent_.end()) {
      void* const block = bytes > 0 ? backend_->allocate(bytes) : nullptr;
      persistent_.push_back({std::string(role), static_cast<std::byte*>(block), bytes});
      persistent_bytes_ += bytes;
      it = persistent_.end() - 1;
    }
    LC_CHECK(bytes <= it->capacity, "persistent buffer '"
                                        << role << "' was sized at " << it->capacity
                                        << " bytes by its first request; a request for " << bytes
                                        << " bytes (shape " << shape << ", " << type
                                        << ") does not fit: make the largest request first "
                                           "(capture the largest batch first)");
    return tensor_view(it->block, type, shape, backend_->where());
  }

  // Starts graph mode until the returned scope is destroyed. Every capture reuses the pool from
  // its start; the pool grows only when this capture needs more than any before it.
  [[nodiscard]] capture_scope graph_scope(std::string_view graph_name) {
    LC_CHECK(!capturing_, "graph_scope('" << graph_name << "') inside graph_scope('"
                                          << graphs_.back().name << "'): scopes do not nest");
    ++graph_generation_;  // leases of earlier captures no longer return their blocks
    if (config_.reuse) graph_pool_.reset();
    graph_pool_.reset_peak();
    graph_base_bytes_ = graph_pool_.stats().live_bytes;
    graphs_.push_back({std::string(graph_name), 0});
    capturing_ = true;
    return capture_scope(this);
  }

  bool capturing() const noexcept { return capturing_; }

  // Sizes the graph pool up front (for example to the peak of an eager warm-up forward at the
  // largest batch), so that the first capture finds one contiguous block. Only before any
  // capture.
  void reserve_graph_pool(std::size_t bytes) {
    LC_CHECK(graphs_.empty(),
             "reserve_graph_pool after " << graphs_.size() << " graph(s) were captured");
    graph_pool_.consolidate(round_up(bytes));
  }

  // Replaces the activation arena's chunks by one chunk of its observed peak. Call between
  // forwards, after a warm-up forward at the largest shape, when no activation lease is live.
  void consolidate() {
    std::size_t const peak = activations_.stats().peak_bytes;
    activations_.consolidate(peak);
    activations_.reset_peak();
  }

  void reset_peak() noexcept { activations_.reset_peak(); }

  cache_tensor_manager_stats stats() const noexcept {
    return {activations_.stats(), graph_pool_.stats(), persistent_bytes_, live_leases_};
  }
  std::vector<graph_record> const& graphs() const noexcept { return graphs_; }
  role_map const& roles() const noexcept { return roles_; }
  cache_tensor_manager_config const& config() const noexcept { return config_; }

  // A human-readable summary: arenas, graphs and the roles that use the most memory.
  std::string report() const {
    std::ostringstream os;
    auto const mib = [](std::size_t b) { return double(b) / (1 << 20); };
    cache_tensor_manager_stats const s = stats();
    os.precision(2);
    os << std::fixed << "activations: peak " << mib(s.activations.peak_bytes) << " MiB, reserved "
       << mib(s.activations.reserved_bytes) << " MiB in " << s.activations.chunks << " chunk(s)\n"
       << "graph pool:  " << graphs_.size() << " graph(s), reserved "
       << mib(s.graph_pool.reserved_bytes) << " MiB\n"
       << "persistent:  " << mib(s.persistent_bytes) << " MiB in " << persistent_.size()
       << " buffer(s)\n";
    std::vector<std::pair<std::string, role_stats>> sorted(roles_.begin(), roles_.end());
    std::sort(sorted.begin(), sorted.end(), [](auto const& a, auto const& b) {
      return a.second.largest_bytes > b.second.largest_bytes;
    });
    for (auto const& [name, r] : sorted)
      os << "  role " << name << ": " << r.acquires << " acquisition(s), largest "
         << mib(r.largest_bytes) << " MiB\n";
    return os.str();
  }

 private:
  struct persistent_entry {
    std::string role;
    std::byte* block;
    std::size_t capacity;
  };

  static std::size_t round_up(std::size_t bytes) noexcept {
    return (bytes + B::alignment - 1) / B::alignment * B::alignment;
  }

  arena<B>& pool(pool_id id) noexcept { return id == pool_id::graph ? graph_pool_ : activations_; }

  void note_role(std::string_view role, std::size_t bytes) {
    auto it = roles_.find(role);
    if (it == roles_.end()) it = roles_.emplace(std::string(role), role_stats{}).first;
    ++it->second.acquires;
    it->second.largest_bytes = std::max(it->second.largest_bytes, bytes);
  }

  void release(std::byte* block, std::size_t bytes, pool_id id, std::uint64_t generation) noexcept {
    --live_leases_;
    if (bytes == 0) return;
    if (id == pool_id::graph) {
      // A later capture has laid its buffers over this one's: nothing to return.
      if (generation != graph_generation_ || !config_.reuse) return;
      graph_pool_.release(block, bytes);
      return;
    }
    if (config_.reuse) {
      activations_.release(block, bytes);
    } else if (live_leases_ == 0) {
      activations_.reset();  // without reuse, blocks come back only when the forward has ended
    }
  }

  void end_graph() noexcept {
    capturing_ = false;
    arena_stats const s = graph_pool_.stats();
    graphs_.back().peak_bytes = config_.reuse ? s.peak_bytes : s.peak_bytes - graph_base_bytes_;
  }

  B* backend_;
  cache_tensor_manager_config config_;
  arena<B> activations_;
  arena<B> graph_pool_;
  std::vector<persistent_entry> persistent_;
  std::size_t persistent_bytes_ = 0;
  role_map roles_;
  std::vector<graph_record> graphs_;
  std::uint64_t graph_generation_ = 0;
  std::size_t graph_base_bytes_ = 0;
  std::size_t live_leases_ = 0;
  bool capturing_ = false;
};

}  // namespace lightcore::memory
