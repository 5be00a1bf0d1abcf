// The sm_90a warpgroup MMA (wgmma) pieces of the MLA decode and MoE kernels: shared-memory matrix
// descriptors for the 128-byte swizzle, the 128-byte swizzle itself (for threads that write such
// tiles), the fence / commit / wait of asynchronous MMA groups, per-warpgroup register budgets
// (setmaxnreg), and the bf16 shapes the MLA decode uses. Fragment and descriptor layouts are those
// of the PTX ISA ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions").
//
// Layout of a swizzled tile (the only one used here): rows of 128 bytes (64 bf16), 8-row groups of
// 1024 bytes starting on a 1024-byte boundary, the 16-byte chunk c of row r stored at chunk
// c ^ (r % 8). Wider matrices are cut into such 64-column tiles placed one after the other.
//   - K-major operand (q, keys, P): rows are M or N, a k16 step is 32 bytes further along the row;
//     the descriptor's stride byte offset is the 1024 bytes between 8-row groups.
//   - MN-major B (values: rows are k = tokens, 64 output columns per tile): the leading byte offset
//     is the distance between two 64-column tiles, the stride byte offset the 1024 bytes between
//     8-token groups; a k16 step is 2048 bytes further.
// Accumulators (f32) of m64nN: thread (warp w of the warpgroup, lane l, g = l / 4, t = l % 4) holds
// rows 16w + g and 16w + g + 8, columns 8q + 2t and 8q + 2t + 1, as d[q][0..1] and d[q][2..3].
// A from registers (bf16): per warp the m16n8k16 A fragment of rows 16w..16w + 15.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lightcore::kernels::detail {

// The byte offset of 16-byte chunk `chunk` (0..7) of row `row` inside a 128-byte-swizzled tile.
__host__ __device__ constexpr std::uint32_t swizzle128_offset(int row, int chunk) {
  return std::uint32_t(row) * 128u + (std::uint32_t(chunk ^ (row & 7)) << 4);
}

// Descriptor of a 128-byte-swizzled operand at shared address `addr` (16-byte aligned; its
// 8-row groups 1024-byte aligned, so the base offset field stays 0). Offsets in bytes.
__device__ __forceinline__ std::uint64_t wgmma_desc_sw128(std::uint32_t addr,
                                                          std::uint32_t leading_bytes,
                                                          std::uint32_t stride_bytes) {
  return std::uint64_t((addr & 0x3FFFFu) >> 4) | (std::uint64_t(leading_bytes >> 4) << 16) |
         (std::uint64_t(stride_bytes >> 4) << 32) | (std::uint64_t(1) << 62);
}
// K-major: the leading byte offset is unused (1 by convention), 1024 bytes between 8-row groups.
__device__ __forceinline__ std::uint64_t wgmma_desc_k_major(std::uint32_t addr) {
  return wgmma_desc_sw128(addr, 16, 1024);
}

// Before the first wgmma of a batch: orders the threads' earlier register and shared-memory
// writes (accumulators, A fragments) before the asynchronous MMAs read them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most Pending committed groups of the warpgroup are still running.
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}
// Pins accumulators in place around asynchronous MMAs: the compiler may not move their reads or
// writes across this point.
template <int Tiles>
__device__ __forceinline__ void wgmma_pin(float (&d)[Tiles][4]) {
#pragma unroll
  for (int i = 0; i < Tiles; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}

// The same for a flat accumulator array.
template <int N>
__device__ __forceinline__ void wgmma_pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The warpgroup's register budget per thread (a multiple of 8, 24..256): producers give registers
// back, consumers take them. Needs a register cap at kernel entry (__launch_bounds__(n, 1)).
template <int Registers>
__device__ __forceinline__ void warpgroup_registers_down() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Registers));
}
template <int Registers>
__device__ __forceinline__ void warpgroup_registers_up() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Registers));
}

#define LC_WGMMA_TILE(d, n) "+f"(d[n][0]), "+f"(d[n][1]), "+f"(d[n][2]), "+f"(d[n][3])
#define LC_WGMMA_TILES8(d, n)                                                                     \
  LC_WGMMA_TILE(d, n), LC_WGMMA_TILE(d, n + 1), LC_WGMMA_TILE(d, n + 2), LC_WGMMA_TILE(d, n + 3), \
      LC_WGMMA_TILE(d, n + 4), LC_WGMMA_TILE(d, n + 5), LC_WGMMA_TILE(d, n + 6),                  \
      LC_WGMMA_TILE(d, n + 7)
#define LC_WGMMA_ACC32                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LC_WGMMA_ACC128                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "       \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "       \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "       \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "       \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "       \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, " \
  "%111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, "   \
  "%125, %126, %127}"

// d[64 x 64] += A[64 x 16] . B[16 x 64], A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], std::uint64_t a_desc,
                                                   std::uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LC_WGMMA_ACC32
               ", %32, %33, 1, 1, 1, 0, 0;\n"
               : LC_WGMMA_TILES8(d, 0)
               : "l"(a_desc), "l"(b_desc));
}

// d[64 x 256] += A[64 x 16] . B[16 x 256], A in registers (bf16 pairs), B MN-major in shared.
__device__ __forceinline__ void wgmma_m64n256k16_rs_bt(float (&d)[32][4],
                                                       std::uint32_t const (&a)[4],
                                                       std::uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " LC_WGMMA_ACC128
               ", {%128, %129, %130, %131}, %132, 1, 1, 1, 1;\n"
               : LC_WGMMA_TILES8(d, 0), LC_WGMMA_TILES8(d, 8), LC_WGMMA_TILES8(d, 16),
                 LC_WGMMA_TILES8(d, 24)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// d[64 x 256] += A[64 x 16] . B[16 x 256], A K-major and B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_ss_bt(float (&d)[32][4], std::uint64_t a_desc,
                                                       std::uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " LC_WGMMA_ACC128
               ", %128, %129, 1, 1, 1, 0, 1;\n"
               : LC_WGMMA_TILES8(d, 0), LC_WGMMA_TILES8(d, 8), LC_WGMMA_TILES8(d, 16),
                 LC_WGMMA_TILES8(d, 24)
               : "l"(a_desc), "l"(b_desc));
}

#define LC_WGMMA_ACC64                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d[64 x 128] += A[64 x 16] . B[128 x 16]^T, A and B K-major in shared memory (the prefill's
// S = Q K^T).
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], std::uint64_t a_desc,
                                                    std::uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LC_WGMMA_ACC64
               ", %64, %65, 1, 1, 1, 0, 0;\n"
               : LC_WGMMA_TILES8(d, 0), LC_WGMMA_TILES8(d, 8)
               : "l"(a_desc), "l"(b_desc));
}

// d[64 x 128] += A[64 x 16] . B[16 x 128], A in registers (bf16 pairs), B MN-major in shared
// (the prefill's O += P V).
__device__ __forceinline__ void wgmma_m64n128k16_rs_bt(float (&d)[16][4],
                                                       std::uint32_t const (&a)[4],
                                                       std::uint64_t b_desc) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LC_WGMMA_ACC64
               ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
               : LC_WGMMA_TILES8(d, 0), LC_WGMMA_TILES8(d, 8)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// d[64 x 128] (+)= A[64 x 32] . B[128 x 32]^T, e4m3 in, fp32 accumulators, A and B K-major in
// shared memory; accumulate 0 overwrites d (the first K step of a partial tile).
__device__ __forceinline__ void wgmma_m64n128k32_e4m3_ss(float (&d)[16][4], std::uint64_t a_desc,
                                                         std::uint64_t b_desc, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " LC_WGMMA_ACC64
      ", %64, %65, p, 1, 1;\n}\n"
      : LC_WGMMA_TILES8(d, 0), LC_WGMMA_TILES8(d, 8)
      : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

// Pins A fragments held in registers while an asynchronous MMA may still read them: placed after
// the wgmma_wait that retires the MMA, it keeps the compiler from reusing their registers before.
template <int Steps>
__device__ __forceinline__ void wgmma_pin(std::uint32_t (&a)[Steps][4]) {
#pragma unroll
  for (int i = 0; i < Steps; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[i][e])::"memory");
}

#undef LC_WGMMA_TILE
#undef LC_WGMMA_TILES8
#undef LC_WGMMA_ACC32
#undef LC_WGMMA_ACC64
#undef LC_WGMMA_ACC128

}  // namespace lightcore::kernels::detail
