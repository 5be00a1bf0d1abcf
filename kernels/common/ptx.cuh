// The warp-level PTX the attention and MoE kernels are built from: cp.async with zero fill,
// ldmatrix (plain and transposed), the bf16 m16n8k16 MMA with fp32 accumulators (sm_80+), and the
// sm_90 mbarrier, proxy-fence and bulk-copy instructions of the producer/consumer pipelines.
// Fragment layouts are those of the PTX ISA ("Matrix Fragments for mma.m16n8k16").
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lightcore::kernels::detail {

__device__ __forceinline__ std::uint32_t smem_address(void const* ptr) {
  return std::uint32_t(__cvta_generic_to_shared(ptr));
}

// Starts moving the 128-byte line at ptr into L2 (no register, no wait). Changes no value, so a
// kernel may issue it for data it reads later before waiting on the kernel before it (pdl.cuh).
__device__ __forceinline__ void prefetch_l2(void const* ptr) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));
}

// Copies 16 bytes global -> shared without a register round trip; src_bytes 0 writes 16 zeros
// and reads nothing (rows past the end of a split, slots outside the pool).
__device__ __forceinline__ void cp_async_16(std::uint32_t dst, void const* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Copies 4 bytes global -> shared (a slot id); src_bytes 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_4(std::uint32_t dst, void const* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
// Two 8x8 b16 matrices; lanes 0-15 give the row addresses (the others are ignored).
__device__ __forceinline__ void ldmatrix_x2(std::uint32_t (&r)[2], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// d += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], std::uint32_t const (&a)[4],
                                               std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// o += P[16 x 16] . V[16 x 8 Tiles] (the P V step of attention on mma.sync): V's 16 rows are read
// transposed by ldmatrix from shared memory, block j of 16 columns at v_addr + 32 j (v_addr being
// this lane's ldmatrix row address for block 0).
template <int Tiles>
__device__ __forceinline__ void mma_bf16_16816_pv(float (&o)[Tiles][4], std::uint32_t const (&p)[4],
                                                  std::uint32_t v_addr) {
  static_assert(Tiles % 2 == 0, "V blocks of 16 columns: two n8 tiles each");
#pragma unroll
  for (int j = 0; j < Tiles / 2; ++j) {
    std::uint32_t v[4];
    ldmatrix_x4_trans(v, v_addr + j * 32);
    mma_bf16_16816(o[2 * j], p, v[0], v[1]);
    mma_bf16_16816(o[2 * j + 1], p, v[2], v[3]);
  }
}

// mbarriers (sm_90). `count` arrivals complete a phase, together with the bytes announced by
// arrive_expect_tx having landed; waiters poll the phase parity.
__device__ __forceinline__ void mbarrier_init(std::uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialised mbarriers visible to the other threads and to the bulk-copy engine (then a
// CTA barrier).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive(std::uint32_t bar) {
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar)
               : "memory");
}
// One arrival that also announces `bytes` of bulk copies completing on this barrier.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Returns once the phase of parity `parity` has completed (acquire: its writes are visible).
__device__ __forceinline__ void mbarrier_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}
// Orders this thread's generic-proxy shared-memory writes before later bulk copies into them.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// The bulk-copy engine copies `bytes` (a multiple of 16; both addresses 16-byte aligned) global
// -> shared and counts them on the mbarrier `bar` when they land.
__device__ __forceinline__ void bulk_copy_global_to_shared(std::uint32_t dst, void const* src,
                                                           std::uint32_t bytes, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
}
// Bulk tensor copies (TMA): the box of the tensor map at `map` (a __grid_constant__ CUtensorMap
// kernel parameter, passed by address) whose first element has coordinates (c0 innermost, ...) ->
// shared `dst`, counted on the mbarrier `bar` when it lands. Elements outside the tensor are
// written as zeros and still counted.
__device__ __forceinline__ void tma_load_2d(std::uint32_t dst, void const* map, int c0, int c1,
                                            std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, void const* map, int c0, int c1,
                                            int c2, std::uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// One arrival on `bar` once every cp.async this thread issued before has landed, without waiting
// for them here (the barrier's expected count includes it: no pending-count increment).
__device__ __forceinline__ void cp_async_mbarrier_arrive_noinc(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits for `threads` threads (a multiple of 32) at named barrier `id` (1..15; 0 is
// __syncthreads).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Two floats as a bf16 pair (round to nearest even), the first in the low half.
__device__ __forceinline__ std::uint32_t pack_bf16x2(float lo, float hi) {
  std::uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

}  // namespace lightcore::kernels::detail
