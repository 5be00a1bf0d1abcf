// radix_cache: the prefix cache over the token-level KV pool. A radix tree over token-id
// sequences whose values are KV slot ids, one per token; a new request reuses the KV of the
// longest cached prefix of its prompt instead of recomputing it.
//
// Ownership: a slot in the tree belongs to the tree. insert() keeps the slots of the first owner
// of each position and tells the caller how many leading positions were cached already (their
// slots stay the caller's, to free); evict() hands slots back through a callback. Nodes on the
// path to a locked node are never evicted, so a running request locks its matched prefix.
//
//   auto m = cache.match(prompt);               // longest cached prefix, its slots
//   cache.lock(m.node);                         // the request now reads those slots
//   ...                                         // prefill the rest with fresh slots
//   auto ins = cache.insert(seq, seq_slots);    // at the end: publish the whole sequence
//   slots.free(seq_slots.subspan(m.length, ins.existing - m.length));  // duplicates of ours
//   cache.unlock(m.node);
//   cache.evict(need, [&](std::span<std::int32_t const> s) { slots.free(s); });
//
// Storage is pooled so that steady-state match/insert/evict never call the allocator: nodes live
// in a vector with a free list; children are found through one open-addressing map keyed by
// (parent, first token); an edge's tokens and slots are not stored per node at all but in two
// tables indexed by slot id (the token a slot holds, the next slot on the same edge), so an edge
// is just (first slot, length), a split only cuts a chain, and the tables are bounded by the
// pool's capacity. Every table grows only when the tree grows past its previous peak.
//
// Not thread-safe: it belongs to the thread that schedules.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "lightcore/core/error.hpp"

namespace lightcore::memory {

struct radix_cache_options {
  bool enabled = true;  // default true; false: match finds nothing and insert keeps nothing
  std::int64_t slot_capacity = 0;  // slots; default 0: tables grow on demand. Pass the KV pool's
                                   // capacity to size every table up front (about 100 bytes of
                                   // host memory per slot), after which no call allocates
};

struct radix_cache_stats {
  std::int64_t queries = 0;          // match() calls
  std::int64_t query_tokens = 0;     // tokens looked up by match()
  std::int64_t hit_tokens = 0;       // of those, tokens found cached
  std::int64_t inserted_tokens = 0;  // tokens (slots) the tree took by insert()
  std::int64_t evicted_tokens = 0;   // tokens (slots) handed back by evict()

  // Share of looked-up tokens served from the cache, in [0, 1]; 0 before any lookup.
  double hit_rate() const noexcept {
    return query_tokens > 0 ? double(hit_tokens) / double(query_tokens) : 0.0;
  }
};

namespace detail {

// Open-addressing (linear probing) map from (parent node, first token of the child's edge) to
// the child node. Deletion shifts entries back instead of leaving tombstones, so probe
// sequences stay short under the churn of insert/evict cycles.
class radix_child_map {
 public:
  radix_child_map() { rebuild(16); }

  std::int32_t find(std::int32_t parent, std::int32_t token) const noexcept {
    std::uint64_t const k = key(parent, token);
    for (std::size_t i = home(k);; i = (i + 1) & mask_) {
      if (entries_[i].key == k) return entries_[i].value;
      if (entries_[i].key == empty_key) return -1;
    }
  }

  // Adds a key that is not present.
  void insert(std::int32_t parent, std::int32_t token, std::int32_t child) {
    if ((size_ + 1) * 2 > entries_.size()) rebuild(entries_.size() * 2);
    place(key(parent, token), child);
    ++size_;
  }

  // Points an existing key at another child.
  void update(std::int32_t parent, std::int32_t token, std::int32_t child) noexcept {
    entries_[index_of(key(parent, token))].value = child;
  }

  // Removes an existing key.
  void erase(std::int32_t parent, std::int32_t token) noexcept {
    std::size_t hole = index_of(key(parent, token));
    for (std::size_t j = (hole + 1) & mask_; entries_[j].key != empty_key; j = (j + 1) & mask_) {
      // Entry j may fill the hole when the hole lies on its probe path (from home to j).
      std::size_t const h = home(entries_[j].key);
      if (((j - h) & mask_) >= ((j - hole) & mask_)) {
        entries_[hole] = entries_[j];
        hole = j;
      }
    }
    entries_[hole] = {empty_key, -1};
    --size_;
  }

  void clear() noexcept {
    std::fill(entries_.begin(), entries_.end(), entry{empty_key, -1});
    size_ = 0;
  }
  // Room for n keys without growing.
  void reserve(std::size_t n) {
    std::size_t capacity = entries_.size();
    while (capacity < 2 * n) capacity *= 2;
    if (capacity != entries_.size()) rebuild(capacity);
  }
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return entries_.size(); }

 private:
  struct entry {
    std::uint64_t key;
    std::int32_t value;
  };
  // Parent ids are >= 0, so no real key has all bits set.
  static constexpr std::uint64_t empty_key = ~std::uint64_t{0};

  static std::uint64_t key(std::int32_t parent, std::int32_t token) noexcept {
    return (std::uint64_t(std::uint32_t(parent)) << 32) | std::uint32_t(token);
  }
  std::size_t home(std::uint64_t k) const noexcept {
    return std::size_t((k * 0x9e3779b97f4a7c15ull) >> shift_);  // Fibonacci hashing
  }
  std::size_t index_of(std::uint64_t k) const noexcept {
    std::size_t i = home(k);
    while (entries_[i].key != k) i = (i + 1) & mask_;
    return i;
  }
  void place(std::uint64_t k, std::int32_t v) noexcept {
    std::size_t i = home(k);
    while (entries_[i].key != empty_key) i = (i + 1) & mask_;
    entries_[i] = {k, v};
  }
  void rebuild(std::size_t capacity) {
    std::vector<entry> old = std::move(entries_);
    entries_.assign(capacity, entry{empty_key, -1});
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
    for (entry const& e : old)
      if (e.key != empty_key) place(e.key, e.value);
  }

  std::vector<entry> entries_;  // power-of-two size, at most half full
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

}  // namespace detail

class radix_cache {
 public:
  // A node of the tree as seen by callers: what match/insert return and lock/unlock take. The
  // generation catches a handle kept past the eviction of its node.
  struct handle {
    std::int32_t node = 0;  // 0: the root (the empty prefix)
    std::uint32_t generation = 0;
    friend bool operator==(handle const&, handle const&) = default;
  };

  struct match_result {
    std::int64_t length = 0;  // tokens of the longest cached prefix
    handle node;              // the node that ends exactly there (lock it to keep the prefix)
    std::span<std::int32_t const> slots;  // [length] their slot ids; valid until the next match()
  };

  struct insert_result {
    // Leading tokens whose slots the tree did not take: the prefix already cached (the tree
    // keeps the first owner's slots), or every token when the cache is disabled. The caller
    // still owns slots[0, existing) and frees those it allocated itself.
    std::int64_t existing = 0;
    handle node;  // the node that ends at the last token
  };

  explicit radix_cache(radix_cache_options const& options = {}) : options_(options) {
    LC_CHECK(options.slot_capacity >= 0 && options.slot_capacity <= std::int64_t{INT32_MAX},
             "radix_cache slot_capacity " << options.slot_capacity
                                          << " is out of range; allowed: 0.." << INT32_MAX);
    token_.assign(std::size_t(options.slot_capacity), 0);
    next_.assign(std::size_t(options.slot_capacity), not_cached);
    if (options.slot_capacity > 0) {
      // Every node but the root holds at least one slot, so this bounds every table.
      std::size_t const nodes = std::size_t(options.slot_capacity) + 1;
      nodes_.reserve(nodes);
      free_nodes_.reserve(nodes);
      heap_.reserve(nodes);
      children_.reserve(nodes);
      matched_.reserve(nodes);
      evicted_.reserve(nodes);
    }
    clear_tree();
  }

  // The longest cached prefix of `tokens`. A match that ends inside an edge splits it there, so
  // the returned node covers exactly the matched prefix. Counts towards the stats and refreshes
  // the prefix's place in the LRU order. A prefill must compute at least the last prompt
  // token to get its logits, so callers match all but the last token of a prompt.
  match_result match(std::span<std::int32_t const> tokens) {
    if (!options_.enabled) return {0, root_handle(), {}};
    ++clock_;
    matched_.clear();
    auto const [end, length] = walk(tokens, &matched_);
    ++stats_.queries;
    stats_.query_tokens += std::int64_t(tokens.size());
    stats_.hit_tokens += length;
    return {length, handle_of(end), matched_};
  }

  // How many leading tokens of `tokens` the cache holds, without changing anything: no split,
  // no LRU refresh, no stats. For questions asked again and again before anything is pinned (a
  // scheduler sizing an admission); match() is what takes the prefix.
  std::int64_t cached_prefix(std::span<std::int32_t const> tokens) const {
    if (!options_.enabled) return 0;
    std::int32_t cur = root;
    std::size_t i = 0;
    while (i < tokens.size()) {
      std::int32_t const child = children_.find(cur, tokens[i]);
      if (child < 0) break;
      node const& c = nodes_[std::size_t(child)];
      std::int32_t k = 0;
      for (std::int32_t s = c.head; k < c.length && i + std::size_t(k) < tokens.size() &&
                                    token_[std::size_t(s)] == tokens[i + std::size_t(k)];
           s = next_[std::size_t(s)])
        ++k;
      i += std::size_t(k);
      if (k < c.length) break;
      cur = child;
    }
    return std::int64_t(i);
  }

  // Caches `tokens` with their slot ids (slots[i] holds the KV of tokens[i]). The tree takes
  // slots[existing, n); those must be valid ids (>= 0) that the tree does not hold already.
  insert_result insert(std::span<std::int32_t const> tokens, std::span<std::int32_t const> slots) {
    LC_CHECK(tokens.size() == slots.size(), "radix_cache::insert of "
                                                << tokens.size() << " tokens with " << slots.size()
                                                << " slots; every token needs exactly one slot");
    LC_CHECK(tokens.size() <= std::size_t(INT32_MAX),
             "radix_cache::insert of " << tokens.size() << " tokens; at most " << INT32_MAX);
    auto const n = std::int64_t(tokens.size());
    if (!options_.enabled) return {n, root_handle()};
    ++clock_;
    auto const [parent, existing] = walk(tokens, nullptr);
    if (existing == n) return {n, handle_of(parent)};
    take_slots(slots.subspan(std::size_t(existing)));
    std::int32_t const leaf = new_node();
    node& v = nodes_[std::size_t(leaf)];
    v.parent = parent;
    v.head = slots[std::size_t(existing)];
    v.length = std::int32_t(n - existing);
    v.last_access = clock_;
    for (std::int64_t j = existing; j < n; ++j) {
      std::int32_t const s = slots[std::size_t(j)];
      token_[std::size_t(s)] = tokens[std::size_t(j)];
      next_[std::size_t(s)] = j + 1 < n ? slots[std::size_t(j + 1)] : end_of_edge;
    }
    children_.insert(parent, tokens[std::size_t(existing)], leaf);
    ++nodes_[std::size_t(parent)].children;
    cached_ += n - existing;
    evictable_ += n - existing;
    stats_.inserted_tokens += n - existing;
    return {existing, handle_of(leaf)};
  }

  // Takes a reference on every node from the root to h: none of them is evicted until unlock.
  void lock(handle h) {
    if (!options_.enabled) return;
    check_handle(h, "lock");
    for (std::int32_t i = h.node; i >= 0; i = nodes_[std::size_t(i)].parent) {
      node& v = nodes_[std::size_t(i)];
      if (v.ref++ == 0 && i != root) evictable_ -= v.length;
    }
  }

  // Drops the references lock(h) took.
  void unlock(handle h) {
    if (!options_.enabled) return;
    check_handle(h, "unlock");
    LC_CHECK(nodes_[std::size_t(h.node)].ref > 0,
             "radix_cache::unlock of node " << h.node << " that is not locked (more unlocks "
                                            << "than locks)");
    for (std::int32_t i = h.node; i >= 0; i = nodes_[std::size_t(i)].parent) {
      node& v = nodes_[std::size_t(i)];
      if (--v.ref == 0 && i != root) evictable_ += v.length;
    }
  }

  // Frees at least min(n_tokens, evictable_tokens()) cached tokens, least recently used
  // unlocked leaves first; a parent whose last child goes becomes a candidate in turn. The last
  // leaf taken is trimmed from its tail rather than dropped whole, so exactly
  // min(n_tokens, evictable_tokens()) tokens are freed. on_freed(std::span<std::int32_t const>)
  // receives the freed slot ids (once per edge) and must not call back into the cache. Returns
  // the number of tokens freed. Cost: one scan of the node pool to build the candidate heap,
  // then O(log nodes + edge length) per edge freed.
  template <class F>
  std::int64_t evict(std::int64_t n_tokens, F&& on_freed) {
    if (!options_.enabled || n_tokens <= 0) return 0;
    heap_.clear();
    for (std::size_t i = 1; i < nodes_.size(); ++i)
      if (is_evictable_leaf(std::int32_t(i))) heap_.push_back({nodes_[i].last_access, i});
    std::make_heap(heap_.begin(), heap_.end(), std::greater<>{});
    std::int64_t freed = 0;
    while (freed < n_tokens && !heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>{});
      auto const id = std::int32_t(heap_.back().node);
      heap_.pop_back();
      std::int64_t const want = n_tokens - freed;
      node& v = nodes_[std::size_t(id)];
      evicted_.clear();
      if (want < v.length) {
        // Keep the head of the edge; the handle's prefix changed, so old handles go stale.
        std::int32_t last = v.head;
        for (std::int64_t j = 1; j < v.length - want; ++j) last = next_[std::size_t(last)];
        std::int32_t const tail = next_[std::size_t(last)];
        next_[std::size_t(last)] = end_of_edge;
        release_chain(tail);
        v.length -= std::int32_t(want);
        ++v.generation;
      } else {
        std::int32_t const parent = v.parent;
        children_.erase(parent, token_[std::size_t(v.head)]);
        release_chain(v.head);
        release_node(id);
        if (--nodes_[std::size_t(parent)].children == 0 && is_evictable_leaf(parent))
          push_candidate(parent);
      }
      auto const count = std::int64_t(evicted_.size());
      cached_ -= count;
      evictable_ -= count;
      stats_.evicted_tokens += count;
      freed += count;
      on_freed(std::span<std::int32_t const>(evicted_));
    }
    return freed;
  }

  // Drops the whole tree, locks included (every handle goes stale), and the stats. on_freed
  // receives every slot the tree held, as in evict().
  template <class F>
  void reset(F&& on_freed) {
    for (std::size_t i = 1; i < nodes_.size(); ++i) {
      if (!nodes_[i].live) continue;
      evicted_.clear();
      release_chain(nodes_[i].head);
      on_freed(std::span<std::int32_t const>(evicted_));
    }
    clear_tree();
  }
  // The same, for a caller that drops the slots' memory as a whole (the KV pool is reset too).
  void reset() {
    reset([](std::span<std::int32_t const>) {});
  }

  bool enabled() const noexcept { return options_.enabled; }
  std::int64_t cached_tokens() const noexcept { return cached_; }
  // Tokens that evict() could free now: cached tokens on no locked path.
  std::int64_t evictable_tokens() const noexcept { return evictable_; }
  radix_cache_stats const& stats() const noexcept { return stats_; }
  void reset_stats() noexcept { stats_ = {}; }
  handle root_handle() const noexcept { return {root, nodes_[root].generation}; }

  // Sizes of the pooled storage (to check that it stops growing in steady state).
  std::size_t live_nodes() const noexcept { return nodes_.size() - free_nodes_.size(); }
  std::size_t node_pool_size() const noexcept { return nodes_.size(); }
  std::size_t child_map_capacity() const noexcept { return children_.capacity(); }
  std::size_t slot_table_size() const noexcept { return next_.size(); }

 private:
  static constexpr std::int32_t root = 0;
  static constexpr std::int32_t end_of_edge = -1;  // next_ of the last slot of an edge
  static constexpr std::int32_t not_cached = -2;   // next_ of a slot the tree does not hold

  struct node {
    std::int32_t parent = -1;  // -1 for the root
    std::int32_t head = -1;    // first slot of the edge; the rest follow through next_
    std::int32_t length = 0;   // tokens on the edge (>= 1 except at the root)
    std::int32_t children = 0;
    std::int32_t ref = 0;  // locks on this node or below it
    std::uint32_t generation = 0;
    std::uint64_t last_access = 0;  // logical clock of the last match/insert through it
    bool live = false;
  };

  struct candidate {
    std::uint64_t last_access;
    std::size_t node;
    friend auto operator<=>(candidate const&, candidate const&) = default;
  };

  struct walk_result {
    std::int32_t node;
    std::int64_t length;
  };

  // Follows `tokens` from the root as far as the tree holds them, splitting the edge where the
  // match stops inside one, and stamps the path with the clock. Appends matched slots to `out`.
  walk_result walk(std::span<std::int32_t const> tokens, std::vector<std::int32_t>* out) {
    std::int32_t cur = root;
    nodes_[root].last_access = clock_;
    std::size_t i = 0;
    while (i < tokens.size()) {
      std::int32_t const child = children_.find(cur, tokens[i]);
      if (child < 0) break;
      node& c = nodes_[std::size_t(child)];
      c.last_access = clock_;
      std::int32_t k = 0;
      std::int32_t last = -1;
      for (std::int32_t s = c.head; k < c.length && i + std::size_t(k) < tokens.size() &&
                                    token_[std::size_t(s)] == tokens[i + std::size_t(k)];
           s = next_[std::size_t(s)]) {
        if (out != nullptr) out->push_back(s);
        last = s;
        ++k;
      }
      i += std::size_t(k);  // k >= 1: the first token is the map key
      if (k < c.length) {
        cur = split(child, k, last);
        break;
      }
      cur = child;
    }
    return {cur, std::int64_t(i)};
  }

  // Puts a new node above `child` holding the first k tokens of its edge (the last of which is
  // in slot `cut`). The child keeps its index, so handles to it stay valid; the new node lies on
  // the same locked paths, so it takes the child's reference count.
  std::int32_t split(std::int32_t child, std::int32_t k, std::int32_t cut) {
    std::int32_t const mid = new_node();
    node& c = nodes_[std::size_t(child)];
    node& m = nodes_[std::size_t(mid)];
    m.parent = c.parent;
    m.head = c.head;
    m.length = k;
    m.children = 1;
    m.ref = c.ref;
    m.last_access = c.last_access;
    children_.update(c.parent, token_[std::size_t(c.head)], mid);
    c.parent = mid;
    c.head = next_[std::size_t(cut)];
    c.length -= k;
    next_[std::size_t(cut)] = end_of_edge;
    children_.insert(mid, token_[std::size_t(c.head)], child);
    return mid;
  }

  // Checks the slots a new edge takes (valid, not held by the tree, no repeats) and marks them,
  // or throws leaving the tree as it was.
  void take_slots(std::span<std::int32_t const> slots) {
    std::int32_t max_slot = -1;
    for (std::size_t j = 0; j < slots.size(); ++j) {
      LC_CHECK(slots[j] >= 0, "radix_cache::insert: slot id " << slots[j] << " (token " << j
                                                              << " of the new suffix) is "
                                                                 "negative; slot ids are >= 0");
      max_slot = std::max(max_slot, slots[j]);
    }
    if (std::size_t(max_slot) >= next_.size()) {
      std::size_t const size = std::max(std::size_t(max_slot) + 1, next_.size() * 2);
      token_.resize(size, 0);
      next_.resize(size, not_cached);
    }
    for (std::size_t j = 0; j < slots.size(); ++j) {
      std::int32_t const s = slots[j];
      if (next_[std::size_t(s)] == not_cached) {
        next_[std::size_t(s)] = end_of_edge;  // provisional mark, to catch repeats in `slots`
        continue;
      }
      bool const repeated = std::find(slots.begin(), slots.begin() + std::ptrdiff_t(j), s) !=
                            slots.begin() + std::ptrdiff_t(j);
      for (std::size_t r = 0; r < j; ++r) next_[std::size_t(slots[r])] = not_cached;
      LC_THROW("radix_cache::insert: slot "
               << s << " (token " << j << " of the new suffix) is "
               << (repeated ? "repeated in the insert" : "already held by the cache")
               << "; a slot holds one token's KV");
    }
  }

  // Appends the slots of a chain to evicted_ and marks them as no longer cached.
  void release_chain(std::int32_t s) {
    while (s >= 0) {
      evicted_.push_back(s);
      std::int32_t const n = next_[std::size_t(s)];
      next_[std::size_t(s)] = not_cached;
      s = n;
    }
  }

  bool is_evictable_leaf(std::int32_t i) const noexcept {
    node const& v = nodes_[std::size_t(i)];
    return i != root && v.live && v.children == 0 && v.ref == 0;
  }
  void push_candidate(std::int32_t i) {
    heap_.push_back({nodes_[std::size_t(i)].last_access, std::size_t(i)});
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>{});
  }

  std::int32_t new_node() {
    std::int32_t id;
    if (!free_nodes_.empty()) {
      id = free_nodes_.back();
      free_nodes_.pop_back();
    } else {
      LC_CHECK(nodes_.size() < std::size_t(INT32_MAX), "radix_cache: node pool exhausted");
      id = std::int32_t(nodes_.size());
      nodes_.emplace_back();
      // The free list never holds more than every node: reserve now, push without allocating.
      free_nodes_.reserve(nodes_.capacity());
      heap_.reserve(nodes_.capacity());
    }
    node& v = nodes_[std::size_t(id)];
    std::uint32_t const generation = v.generation;
    v = node{};
    v.generation = generation;
    v.live = true;
    return id;
  }
  void release_node(std::int32_t id) noexcept {
    node& v = nodes_[std::size_t(id)];
    v.live = false;
    ++v.generation;
    free_nodes_.push_back(id);
  }

  handle handle_of(std::int32_t i) const noexcept { return {i, nodes_[std::size_t(i)].generation}; }
  void check_handle(handle h, char const* what) const {
    LC_CHECK(h.node >= 0 && std::size_t(h.node) < nodes_.size(),
             "radix_cache::" << what << " of handle " << h.node << ": no such node");
    node const& v = nodes_[std::size_t(h.node)];
    LC_CHECK(v.live && v.generation == h.generation,
             "radix_cache::" << what << " of a stale handle (node " << h.node
                             << "): the node was evicted or trimmed after the handle was made");
  }

  void clear_tree() {
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (nodes_[i].live) release_node(std::int32_t(i));
    }
    free_nodes_.clear();
    for (std::size_t i = nodes_.size(); i-- > 1;) free_nodes_.push_back(std::int32_t(i));
    if (nodes_.empty()) nodes_.emplace_back();
    node& r = nodes_[root];
    std::uint32_t const generation = r.generation;
    r = node{};
    r.generation = generation;
    r.live = true;
    children_.clear();
    cached_ = 0;
    evictable_ = 0;
    clock_ = 0;
    stats_ = {};
  }

  radix_cache_options options_;
  std::vector<node> nodes_;  // nodes_[0] is the root
  std::vector<std::int32_t> free_nodes_;
  detail::radix_child_map children_;
  std::vector<std::int32_t> token_;    // [slot] the token whose KV the slot holds
  std::vector<std::int32_t> next_;     // [slot] next slot on the same edge, or a marker
  std::vector<std::int32_t> matched_;  // slots of the last match
  std::vector<std::int32_t> evicted_;  // slots of the edge being evicted
  std::vector<candidate> heap_;        // eviction candidates, oldest on top
  std::int64_t cached_ = 0;
  std::int64_t evictable_ = 0;
  std::uint64_t clock_ = 0;
  radix_cache_stats stats_;
};

}  // namespace lightcore::memory
