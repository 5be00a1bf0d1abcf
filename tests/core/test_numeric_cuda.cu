// bf16, fp16 and fp8_e4m3 on the device: CUDA's intrinsics, lightcore's types in device code and
// lightcore's software path run on the device, compared bit for bit with each other and with
// lightcore's host conversion; plus bit-preserving interop with __nv_bfloat16, __half and
// __nv_fp8_e4m3. Device tests skip, with the reason, when no device is present. One test needs
// no device: CUDA's own host fallback against lightcore's host path.
//
// Tolerance: none (see test_numeric.cpp). NaN results are compared as bits too, since lightcore
// promises CUDA's exact encodings. Random inputs come from a fresh seed each run, printed;
// LIGHTCORE_TEST_SEED=<seed> replays a run.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/seed.hpp"
#include "lightcore/core/bf16.hpp"
#include "lightcore/core/error.hpp"
#include "lightcore/core/fp16.hpp"
#include "lightcore/core/fp8.hpp"

// Every CUDA call is checked; a failure throws lightcore::error, which fails the test with the
// call and CUDA's message.
#define LC_TEST_CUDA_CHECK(call)                                                              \
  do {                                                                                        \
    cudaError_t const lc_status_ = (call);                                                    \
    LC_CHECK(lc_status_ == cudaSuccess, #call " failed: " << cudaGetErrorString(lc_status_)); \
  } while (0)

// After a launch: the launch itself, then the kernel's execution.
#define LC_TEST_CUDA_CHECK_LAUNCH()              \
  do {                                           \
    LC_TEST_CUDA_CHECK(cudaGetLastError());      \
    LC_TEST_CUDA_CHECK(cudaDeviceSynchronize()); \
  } while (0)

namespace {

using lightcore::bf16;
using lightcore::fp16;
using lightcore::fp8_e4m3;

constexpr int block_size = 256;
constexpr int grid_size = 1024;  // grid-stride loops cover any n

// ---- What CUDA does, and lightcore's software path, per format -------------------------------

template <class T>
struct ops;

template <>
struct ops<bf16> {
  using storage = std::uint16_t;
  using cuda_type = __nv_bfloat16;
  static constexpr std::uint32_t code_count = 1u << 16;
  static __host__ __device__ storage cuda_encode(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
  static __host__ __device__ float cuda_decode(storage c) {
    return __bfloat162float(__ushort_as_bfloat16(c));
  }
  static __host__ __device__ storage soft_encode(float x) {
    return lightcore::detail::float_to_bf16_bits_soft(x);
  }
  static __host__ __device__ float soft_decode(storage c) {
    return lightcore::detail::bf16_bits_to_float_soft(c);
  }
  static __host__ __device__ storage cuda_bits(cuda_type x) { return __bfloat16_as_ushort(x); }
};

template <>
struct ops<fp16> {
  using storage = std::uint16_t;
  using cuda_type = __half;
  static constexpr std::uint32_t code_count = 1u << 16;
  static __host__ __device__ storage cuda_encode(float x) {
    return __half_as_ushort(__float2half_rn(x));
  }
  static __host__ __device__ float cuda_decode(storage c) {
    return __half2float(__ushort_as_half(c));
  }
  static __host__ __device__ storage soft_encode(float x) {
    return lightcore::detail::float_to_fp16_bits_soft(x);
  }
  static __host__ __device__ float soft_decode(storage c) {
    return lightcore::detail::fp16_bits_to_float_soft(c);
  }
  static __host__ __device__ storage cuda_bits(cuda_type x) { return __half_as_ushort(x); }
};

template <>
struct ops<fp8_e4m3> {
  using storage = std::uint8_t;
  using cuda_type = __nv_fp8_e4m3;
  static constexpr std::uint32_t code_count = 1u << 8;
  // __nv_fp8_e4m3's float constructor: __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
  static __host__ __device__ storage cuda_encode(float x) { return __nv_fp8_e4m3(x).__x; }
  static __host__ __device__ float cuda_decode(storage c) {
    __nv_fp8_e4m3 v{};
    v.__x = c;
    return static_cast<float>(v);
  }
  static __host__ __device__ storage soft_encode(float x) {
    return lightcore::detail::float_to_fp8_e4m3_bits_soft(x);
  }
  static __host__ __device__ float soft_decode(storage c) {
    return lightcore::detail::fp8_e4m3_bits_to_float_soft(c);
  }
  static __host__ __device__ storage cuda_bits(cuda_type x) { return x.__x; }
};

template <class T>
using storage_t = typename ops<T>::storage;

// ---- Kernels ---------------------------------------------------------------------------------

// Decodes every code three ways (CUDA, lightcore's type, lightcore's software path) and round-trips
// it through CUDA's type both ways lightcore offers.
template <class T>
__global__ void __launch_bounds__(block_size)
    decode_kernel(std::uint32_t* cuda_out,              // [code_count] float bits
                  std::uint32_t* type_out,              // [code_count] float bits
                  std::uint32_t* soft_out,              // [code_count] float bits
                  storage_t<T>* interop_cast_out,       // [code_count]
                  storage_t<T>* interop_to_cuda_out) {  // [code_count]
  using o = ops<T>;
  for (std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < o::code_count;
       i += gridDim.x * blockDim.x) {
    auto const c = static_cast<storage_t<T>>(i);
    T const t = T::from_bits(c);
    float const implicit = t;
    cuda_out[i] = __float_as_uint(o::cuda_decode(c));
    type_out[i] = __float_as_uint(implicit);
    soft_out[i] = __float_as_uint(o::soft_decode(c));
    interop_cast_out[i] = T(static_cast<typename o::cuda_type>(t)).bits;
    interop_to_cuda_out[i] = o::cuda_bits(t.to_cuda());
  }
}

// Encodes every input three ways: CUDA's intrinsic, lightcore's type, lightcore's software path.
// in: [n] floats; each output: [n] codes.
template <class T>
__global__ void __launch_bounds__(block_size)
    encode_kernel(float const* in, std::size_t n, storage_t<T>* cuda_out, storage_t<T>* type_out,
                  storage_t<T>* soft_out) {
  using o = ops<T>;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n;
       i += std::size_t{gridDim.x} * blockDim.x) {
    float const x = in[i];
    cuda_out[i] = o::cuda_encode(x);
    type_out[i] = T(x).bits;
    soft_out[i] = o::soft_encode(x);
  }
}

// Constant evaluation inside device code takes the software path (inline PTX cannot run there);
// the static_asserts are checked by the device compilation pass as well as the host one.
__global__ void constexpr_kernel(std::uint32_t* out) {  // [6]
  constexpr bf16 b(3.3f);
  constexpr fp16 h(3.3f);
  constexpr fp8_e4m3 f(3.3f);
  static_assert(b.bits == 0x4053 && h.bits == 0x429A && f.bits == 0x45);
  static_assert(fp8_e4m3(1000.0f).bits == 0x7E && fp16(65520.0f).bits == 0x7C00);
  static_assert(std::numeric_limits<fp8_e4m3>::max().to_float() == 448.0f);
  constexpr float widened = fp8_e4m3::from_bits(0x45).to_float();
  out[0] = b.bits;
  out[1] = h.bits;
  out[2] = f.bits;
  out[3] = __float_as_uint(widened);
  out[4] = bf16::max_finite().bits;
  out[5] = fp16::quiet_nan().bits;
}

// Conversions between the 16- and 8-bit types on the device, lightcore's (through float) next to
// CUDA's own: __nv_fp8_e4m3 from __half / __nv_bfloat16, and __nv_bfloat16 from __half.
__global__ void __launch_bounds__(block_size) cross_kernel(
    std::uint32_t* lightcore_out,  // [65536] fp8(bf16) | fp8(fp16) << 8 | bf16(fp16) << 16
    std::uint32_t* cuda_out) {     // [65536] same layout
  for (std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < (1u << 16);
       i += gridDim.x * blockDim.x) {
    auto const c = static_cast<std::uint16_t>(i);
    bf16 const b = bf16::from_bits(c);
    fp16 const h = fp16::from_bits(c);
    lightcore_out[i] = std::uint32_t{fp8_e4m3(b).bits} | std::uint32_t{fp8_e4m3(h).bits} << 8 |
                       std::uint32_t{bf16(h).bits} << 16;
    __nv_bfloat16 const cb = __ushort_as_bfloat16(c);
    __half const ch = __ushort_as_half(c);
    cuda_out[i] = std::uint32_t{__nv_fp8_e4m3(cb).__x} | std::uint32_t{__nv_fp8_e4m3(ch).__x} << 8 |
                  std::uint32_t{__bfloat16_as_ushort(__nv_bfloat16(ch))} << 16;
  }
}

// ---- Host helpers ----------------------------------------------------------------------------

template <class E>
class device_buffer {
 public:
  explicit device_buffer(std::size_t n) : n_(n) {
    LC_TEST_CUDA_CHECK(cudaMalloc(&data_, n * sizeof(E)));
  }
  explicit device_buffer(std::vector<E> const& host) : device_buffer(host.size()) {
    LC_TEST_CUDA_CHECK(cudaMemcpy(data_, host.data(), n_ * sizeof(E), cudaMemcpyHostToDevice));
  }
  device_buffer(device_buffer const&) = delete;
  device_buffer& operator=(device_buffer const&) = delete;
  ~device_buffer() { cudaFree(data_); }

  E* get() const { return data_; }
  std::vector<E> to_host() const {
    std::vector<E> host(n_);
    LC_TEST_CUDA_CHECK(cudaMemcpy(host.data(), data_, n_ * sizeof(E), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  E* data_ = nullptr;
  std::size_t n_;
};

std::uint32_t float_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
float bits_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

std::string hex(std::uint32_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << std::uppercase << v;
  return os.str();
}

// Counts mismatches, keeps the first few for the failure message.
class mismatches {
 public:
  explicit mismatches(std::string what) : what_(std::move(what)) {}
  void add(std::string const& detail) {
    if (count_++ < max_shown) shown_ << "\n  " << detail;
  }
  std::size_t count() const { return count_; }
  std::string text() const { return what_ + ":" + shown_.str(); }

 private:
  static constexpr std::size_t max_shown = 10;
  std::string what_;
  std::size_t count_ = 0;
  std::ostringstream shown_;
};

using lightcore::test::run_seed;  // LIGHTCORE_TEST_SEED=<n> replays a run

// sign * 2^e * (1 + m / 2^23) with e uniform in [lowest, highest] and a random mantissa.
float random_float(std::mt19937_64& rng, int lowest, int highest) {
  std::uniform_int_distribution<int> exponent(lowest, highest);
  auto const bits = static_cast<std::uint32_t>(rng());
  float const magnitude =
      std::ldexp(1.0f + static_cast<float>(bits & 0x7F'FFFFu) * 0x1p-23f, exponent(rng));
  return (bits & 0x8000'0000u) != 0 ? -magnitude : magnitude;
}

// Powers of two that cover a format: from a quarter of its smallest subnormal to four times its
// largest binade (the spread test_numeric.cpp uses).
template <class T>
std::pair<int, int> exponent_span() {
  if constexpr (std::is_same_v<T, bf16>) return {-135, 130};
  if constexpr (std::is_same_v<T, fp16>) return {-26, 18};
  return {-11, 10};
}

// Inputs for the encode comparison: every code value of all three formats; every midpoint between
// adjacent codes of T and the floats just beside it; specials; 4M random bit patterns (NaNs,
// Infs, denormals included); 2M random values in fp8's range; 2M in T's range.
template <class T>
std::vector<float> encode_inputs() {
  std::vector<float> in;
  for (std::uint32_t c = 0; c < (1u << 16); ++c) {
    in.push_back(bf16::from_bits(static_cast<std::uint16_t>(c)));
    in.push_back(fp16::from_bits(static_cast<std::uint16_t>(c)));
  }
  for (std::uint32_t c = 0; c < (1u << 8); ++c) {
    in.push_back(fp8_e4m3::from_bits(static_cast<std::uint8_t>(c)));
  }
  float const inf = std::numeric_limits<float>::infinity();
  for (std::uint32_t c = 0; c + 1 < ops<T>::code_count / 2; ++c) {
    float const lo = T::from_bits(static_cast<storage_t<T>>(c));
    float const hi = T::from_bits(static_cast<storage_t<T>>(c + 1));
    if (!std::isfinite(lo) || !std::isfinite(hi)) continue;
    auto const mid = static_cast<float>((double{lo} + double{hi}) / 2);  // exact
    for (float const m : {mid, -mid}) {
      in.push_back(m);
      in.push_back(std::nextafter(m, inf));
      in.push_back(std::nextafter(m, -inf));
    }
  }
  for (std::uint32_t const u :
       {0x0000'0000u, 0x8000'0000u, 0x7F80'0000u, 0xFF80'0000u,   // zeros, infinities
        0x7FC0'0000u, 0xFFC0'0000u, 0x7F80'0001u, 0xFF80'0001u,   // NaNs of both signs,
        0x7FFF'FFFFu, 0xFFFF'FFFFu, 0x7FA5'5555u, 0xFFBF'FFFFu,   // quiet and signalling
        0x7F7F'FFFFu, 0xFF7F'FFFFu, 0x0080'0000u, 0x0000'0001u,   // FLT_MAX, FLT_MIN, denormals
        0x8000'0001u, 0x007F'FFFFu, 0x0000'8000u, 0x0001'8000u,   // more denormals, bf16 ties
        0x7F7F'7FFFu, 0x7F7F'8000u, 0x7F7F'8001u,                 // bf16 overflow edge
        0x477F'E000u, 0x477F'EFFFu, 0x477F'F000u, 0x477F'F001u,   // fp16 overflow edge (65520)
        0x3300'0000u, 0x3300'0001u, 0x3340'0000u,                 // fp16 underflow edge
        0x43E0'0000u, 0x43E8'0000u, 0x43E8'0001u, 0x43F0'0000u,   // fp8 saturation (448..480)
        0x3A80'0000u, 0x3A80'0001u, 0xBA80'0000u, 0x3B40'0000u})  // fp8 underflow edge
  {
    in.push_back(bits_float(u));
    in.push_back(std::nextafter(bits_float(u), inf));
    in.push_back(std::nextafter(bits_float(u), -inf));
  }
  std::mt19937_64 rng(run_seed() ^ ops<T>::code_count);
  for (std::size_t i = 0; i < (std::size_t{1} << 22); ++i) {
    in.push_back(bits_float(static_cast<std::uint32_t>(rng())));
  }
  auto const [fp8_lowest, fp8_highest] = exponent_span<fp8_e4m3>();
  for (std::size_t i = 0; i < (std::size_t{1} << 21); ++i) {
    in.push_back(random_float(rng, fp8_lowest, fp8_highest));
  }
  auto const [lowest, highest] = exponent_span<T>();
  for (std::size_t i = 0; i < (std::size_t{1} << 21); ++i) {
    in.push_back(random_float(rng, lowest, highest));
  }
  return in;
}

std::string describe_encode(float x, std::uint32_t a, char const* a_name, std::uint32_t b,
                            char const* b_name) {
  std::ostringstream os;
  os.precision(9);
  os << "x=" << x << " (" << hex(float_bits(x)) << "): " << a_name << ' ' << hex(a) << ", "
     << b_name << ' ' << hex(b);
  return os.str();
}

void expect_none(mismatches const& m) { EXPECT_EQ(m.count(), 0u) << m.text(); }

// ---- Tests -----------------------------------------------------------------------------------

// Skips when there is no device to run on.
class cuda_device_test : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    cudaError_t const status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();  // clear it, so later tests start clean
      GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount failed: " << cudaGetErrorString(status);
    }
    if (count == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount returned 0";
  }
};

template <class T>
class NumericCuda : public cuda_device_test {};
using formats = ::testing::Types<bf16, fp16, fp8_e4m3>;
TYPED_TEST_SUITE(NumericCuda, formats);

TYPED_TEST(NumericCuda, DecodesEveryCodeLikeCudaAndInteropKeepsBits) {
  using T = TypeParam;
  using o = ops<T>;
  std::size_t const n = o::code_count;
  device_buffer<std::uint32_t> cuda_out(n), type_out(n), soft_out(n);
  device_buffer<storage_t<T>> cast_out(n), to_cuda_out(n);
  decode_kernel<T><<<grid_size, block_size>>>(cuda_out.get(), type_out.get(), soft_out.get(),
                                              cast_out.get(), to_cuda_out.get());
  LC_TEST_CUDA_CHECK_LAUNCH();
  auto const cuda = cuda_out.to_host(), type = type_out.to_host(), soft = soft_out.to_host();
  auto const cast = cast_out.to_host(), to_cuda = to_cuda_out.to_host();

  mismatches vs_host("CUDA intrinsic on device vs lightcore on host");
  mismatches type_vs_cuda("lightcore type on device vs CUDA intrinsic on device");
  mismatches soft_vs_host("lightcore software path on device vs on host");
  mismatches interop("bits after a round trip through CUDA's type");
  for (std::uint32_t c = 0; c < n; ++c) {
    std::uint32_t const host = float_bits(T::from_bits(static_cast<storage_t<T>>(c)));
    auto const detail = [&](std::uint32_t got, std::uint32_t want) {
      return "code " + hex(c) + ": " + hex(got) + " vs " + hex(want);
    };
    if (cuda[c] != host) vs_host.add(detail(cuda[c], host));
    if (type[c] != cuda[c]) type_vs_cuda.add(detail(type[c], cuda[c]));
    if (soft[c] != host) soft_vs_host.add(detail(soft[c], host));
    if (cast[c] != c || to_cuda[c] != c) interop.add(detail(cast[c], to_cuda[c]));
  }
  expect_none(vs_host);
  expect_none(type_vs_cuda);
  expect_none(soft_vs_host);
  expect_none(interop);
}

TYPED_TEST(NumericCuda, EncodesLikeCudaOnEdgeCasesAndRandomFloats) {
  using T = TypeParam;
  std::vector<float> const in = encode_inputs<T>();
  std::size_t const n = in.size();
  device_buffer<float> in_d(in);
  device_buffer<storage_t<T>> cuda_out(n), type_out(n), soft_out(n);
  encode_kernel<T>
      <<<grid_size, block_size>>>(in_d.get(), n, cuda_out.get(), type_out.get(), soft_out.get());
  LC_TEST_CUDA_CHECK_LAUNCH();
  auto const cuda = cuda_out.to_host(), type = type_out.to_host(), soft = soft_out.to_host();

  mismatches vs_host("CUDA intrinsic on device vs lightcore on host");
  mismatches type_vs_cuda("lightcore type on device vs CUDA intrinsic on device");
  mismatches soft_vs_host("lightcore software path on device vs on host");
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t const host = T(in[i]).bits;
    if (cuda[i] != host) vs_host.add(describe_encode(in[i], cuda[i], "device", host, "host"));
    if (type[i] != cuda[i]) {
      type_vs_cuda.add(describe_encode(in[i], type[i], "lightcore", cuda[i], "cuda"));
    }
    if (soft[i] != host) soft_vs_host.add(describe_encode(in[i], soft[i], "device", host, "host"));
  }
  expect_none(vs_host);
  expect_none(type_vs_cuda);
  expect_none(soft_vs_host);
  this->RecordProperty("inputs", static_cast<int>(n));
}

class NumericCudaDevice : public cuda_device_test {};

TEST_F(NumericCudaDevice, ConstantEvaluationInDeviceCodeMatchesTheHost) {
  device_buffer<std::uint32_t> out(6);
  constexpr_kernel<<<1, 1>>>(out.get());
  LC_TEST_CUDA_CHECK_LAUNCH();
  auto const got = out.to_host();
  EXPECT_EQ(got[0], bf16(3.3f).bits);
  EXPECT_EQ(got[1], fp16(3.3f).bits);
  EXPECT_EQ(got[2], fp8_e4m3(3.3f).bits);
  EXPECT_EQ(got[3], float_bits(fp8_e4m3::from_bits(0x45)));
  EXPECT_EQ(got[4], 0x7F7Fu);
  EXPECT_EQ(got[5], 0x7FFFu);
}

TEST_F(NumericCudaDevice, CrossTypeConversionsMatchCudasOwnAndTheHost) {
  std::size_t const n = 1u << 16;
  device_buffer<std::uint32_t> lightcore_out(n), cuda_out(n);
  cross_kernel<<<grid_size, block_size>>>(lightcore_out.get(), cuda_out.get());
  LC_TEST_CUDA_CHECK_LAUNCH();
  auto const lc = lightcore_out.to_host(), cuda = cuda_out.to_host();
  mismatches vs_cuda("lightcore vs CUDA on device [fp8(bf16) | fp8(fp16) << 8 | bf16(fp16) << 16]");
  mismatches vs_host("lightcore on device vs on host [same layout]");
  for (std::uint32_t c = 0; c < n; ++c) {
    bf16 const b = bf16::from_bits(static_cast<std::uint16_t>(c));
    fp16 const h = fp16::from_bits(static_cast<std::uint16_t>(c));
    std::uint32_t const host = std::uint32_t{fp8_e4m3(b).bits} |
                               std::uint32_t{fp8_e4m3(h).bits} << 8 |
                               std::uint32_t{bf16(h).bits} << 16;
    if (lc[c] != cuda[c]) vs_cuda.add("code " + hex(c) + ": " + hex(lc[c]) + " vs " + hex(cuda[c]));
    if (lc[c] != host) vs_host.add("code " + hex(c) + ": " + hex(lc[c]) + " vs " + hex(host));
  }
  expect_none(vs_cuda);
  expect_none(vs_host);
}

// No device needed: CUDA's host fallback (cuda_bf16.hpp, cuda_fp16.hpp, cuda_fp8.hpp) against
// lightcore's host path, on every code and on the same inputs as the device test.
template <class T>
class NumericCudaHostFallback : public ::testing::Test {};
TYPED_TEST_SUITE(NumericCudaHostFallback, formats);

TYPED_TEST(NumericCudaHostFallback, MatchesLightcoreOnTheHost) {
  using T = TypeParam;
  using o = ops<T>;
  mismatches decode("CUDA host fallback vs lightcore, decode");
  for (std::uint32_t c = 0; c < o::code_count; ++c) {
    auto const code = static_cast<storage_t<T>>(c);
    std::uint32_t const cuda = float_bits(o::cuda_decode(code));
    std::uint32_t const lc = float_bits(T::from_bits(code));
    if (cuda != lc) decode.add("code " + hex(c) + ": " + hex(cuda) + " vs " + hex(lc));
    typename o::cuda_type const via_cast = static_cast<typename o::cuda_type>(T::from_bits(code));
    EXPECT_EQ(T(via_cast).bits, c) << "interop changed the bits of " << hex(c);
  }
  expect_none(decode);
  mismatches encode("CUDA host fallback vs lightcore, encode");
  for (float const x : encode_inputs<T>()) {
    std::uint32_t const cuda = o::cuda_encode(x), lc = T(x).bits;
    if (cuda != lc) encode.add(describe_encode(x, cuda, "cuda", lc, "lightcore"));
  }
  expect_none(encode);
}

}  // namespace
