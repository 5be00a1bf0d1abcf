// nccl_communicator on the GPU: world 1 on one device (every collective degenerates to a copy or
// to nothing, through the same code path as more ranks) and world 2 when two devices are visible,
// against the sequential definitions; outputs poisoned first. Skips without the devices.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "common/cuda.hpp"
#include "common/seed.hpp"
#include "dist_test_util.hpp"
#include "lightcore/dist/nccl_communicator.hpp"

namespace lightcore {
namespace {

using dist::nccl_communicator;

static_assert(dist::Communicator<nccl_communicator>);

// A device buffer of T holding `host`, freed at scope exit.
template <class T>
class device_buffer {
 public:
  device_buffer(int ordinal, std::vector<T> const& host) : ordinal_(ordinal), n_(host.size()) {
    backend::device_guard g(ordinal_);
    LC_CUDA_CHECK(cudaMalloc(&p_, bytes() == 0 ? 1 : bytes()));
    LC_CUDA_CHECK(cudaMemcpy(p_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  ~device_buffer() { cudaFree(p_); }
  device_buffer(device_buffer const&) = delete;
  device_buffer& operator=(device_buffer const&) = delete;

  std::size_t bytes() const { return n_ * sizeof(T); }
  tensor_view view(dims shape) const {
    return tensor_view(p_, dtype_v<T>, shape, contiguous_strides(shape), device::cuda(ordinal_));
  }
  std::vector<T> read() const {
    backend::device_guard g(ordinal_);
    std::vector<T> host(n_);
    LC_CUDA_CHECK(cudaMemcpy(host.data(), p_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  int ordinal_;
  std::size_t n_;
  T* p_ = nullptr;
};

class NcclTest : public test::cuda_test {};

// World 1: all-reduce, reduce-scatter, broadcast leave the data as it is; all-gather and
// all-to-all copy it; barrier completes.
TEST_F(NcclTest, WorldOneDegeneratesToCopies) {
  auto rng = test::test_rng();
  backend::cuda dev(0);
  auto stream = dev.make_stream();
  nccl_communicator comm(dev, 0, 1, dist::make_nccl_id());
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);

  std::int64_t const rows = 37, cols = 29;
  auto const xb = test::random_bf16(rows * cols, rng);
  auto const xf = test::random_f32(rows * cols, rng);
  std::vector<bf16> const poison_b(xb.size(), bf16::from_bits(0x7fc1));  // a NaN
  std::vector<float> const poison_f(xf.size(), -777.0f);

  device_buffer<bf16> ab(0, xb);
  comm.all_reduce_sum(ab.view({rows, cols}), stream);
  device_buffer<float> af(0, xf);
  comm.all_reduce_sum(af.view({rows * cols}), stream);

  device_buffer<bf16> gin(0, xb), gout(0, poison_b);
  comm.all_gather(gin.view({rows, cols}), gout.view({rows, cols}), stream);
  device_buffer<float> sin(0, xf), sout(0, poison_f);
  comm.reduce_scatter_sum(sin.view({rows, cols}), sout.view({rows, cols}), stream);

  std::vector<std::int64_t> const counts{rows};
  device_buffer<float> tin(0, xf), tout(0, poison_f);
  comm.all_to_all_v(tin.view({rows, cols}), counts, tout.view({rows, cols}), counts, stream);
  device_buffer<bf16> bc(0, xb);
  comm.broadcast(bc.view({rows * cols}), 0, stream);
  comm.barrier(stream);
  stream.synchronize();

  EXPECT_TRUE(test::same_bits(ab.read(), xb));
  EXPECT_TRUE(test::same_bits(af.read(), xf));
  EXPECT_TRUE(test::same_bits(gout.read(), xb));
  EXPECT_TRUE(test::same_bits(sout.read(), xf));
  EXPECT_TRUE(test::same_bits(tout.read(), xf));
  EXPECT_TRUE(test::same_bits(bc.read(), xb));
}

TEST_F(NcclTest, BadArgumentsNameWhatIsAllowed) {
  backend::cuda dev(0);
  auto stream = dev.make_stream();
  nccl_communicator comm(dev, 0, 1, dist::make_nccl_id());
  device_buffer<std::int32_t> i(0, std::vector<std::int32_t>(8, 1));
  EXPECT_THROW(comm.all_reduce_sum(i.view({8}), stream), error);
  EXPECT_THROW(comm.broadcast(i.view({8}), 1, stream), error);
  EXPECT_THROW(comm.all_gather(i.view({4}), i.view({8}), stream), error);  // world 1: 4 rows
  std::vector<float> host(4);
  EXPECT_THROW(comm.all_reduce_sum(tensor_view(host.data(), dtype::f32, {4}), stream), error);
  EXPECT_THROW(nccl_communicator(dev, 1, 1, dist::make_nccl_id()), error);
}

// Two ranks on two devices, one thread each. With two ranks every sum is one addition of two
// values, which NCCL rounds exactly as the fp32 rank-order sum does, so results are compared
// bit for bit.
TEST_F(NcclTest, WorldTwoMatchesTheDefinitions) {
  if (backend::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  auto rng = test::test_rng();
  constexpr int world = 2;
  std::int64_t const m = 13, cols = 9;
  std::vector<std::vector<bf16>> xb;
  std::vector<std::vector<float>> xf;
  for (int r = 0; r < world; ++r) {
    xb.push_back(test::random_bf16(world * m * cols, rng));
    xf.push_back(test::random_f32(world * m * cols, rng));
  }
  // all_to_all_v: rank s sends counts[s][d] rows to rank d.
  std::vector<std::vector<std::int64_t>> const sends{{2, 5}, {0, 3}}, recvs{{2, 0}, {5, 3}};

  struct result {
    std::vector<bf16> reduced, gathered;
    std::vector<float> scattered, exchanged, broadcast;
  };
  std::vector<result> got(world);
  std::vector<int> const ordinals{0, 1};
  test::within(test::hang_limit, [&] {
    dist::run_nccl_ranks(ordinals, [&](nccl_communicator& c) {
      std::size_t const r = std::size_t(c.rank());
      backend::cuda dev(c.ordinal());
      auto stream = dev.make_stream();
      device_buffer<bf16> ar(c.ordinal(), xb[r]);
      c.all_reduce_sum(ar.view({world * m, cols}), stream);

      device_buffer<bf16> gout(
          c.ordinal(), std::vector<bf16>(std::size_t(world * world * m * cols), bf16(-1.0f)));
      c.all_gather(ar.view({world * m, cols}), gout.view({world * world * m, cols}), stream);

      device_buffer<float> sin(c.ordinal(), xf[r]);
      device_buffer<float> sout(c.ordinal(), std::vector<float>(std::size_t(m * cols), -1.0f));
      c.reduce_scatter_sum(sin.view({world * m, cols}), sout.view({m, cols}), stream);

      device_buffer<float> tout(c.ordinal(), std::vector<float>(std::size_t(10 * cols), -1.0f));
      c.all_to_all_v(sin.view({world * m, cols}), sends[r], tout.view({10, cols}), recvs[r],
                     stream);

      device_buffer<float> bc(c.ordinal(), xf[r]);
      c.broadcast(bc.view({world * m * cols}), 1, stream);
      c.barrier(stream);
      stream.synchronize();
      got[r] = {ar.read(), gout.read(), sout.read(), tout.read(), bc.read()};
    });
  });

  auto const reduced = test::rank_order_sum(xb, 0, xb[0].size());
  std::vector<bf16> gathered = reduced;
  gathered.insert(gathered.end(), reduced.begin(), reduced.end());
  std::size_t const part = std::size_t(m * cols);
  for (std::size_t r = 0; r < world; ++r) {
    EXPECT_TRUE(test::same_bits(got[r].reduced, reduced)) << "rank " << r;
    EXPECT_TRUE(test::same_bits(got[r].gathered, gathered)) << "rank " << r;
    EXPECT_TRUE(test::same_bits(got[r].scattered, test::rank_order_sum(xf, r * part, part)))
        << "rank " << r;
    std::vector<float> want;
    for (std::size_t s = 0; s < world; ++s) {
      std::int64_t first = 0;
      for (std::size_t d = 0; d < r; ++d) first += sends[s][d];
      auto const begin = xf[s].begin() + std::ptrdiff_t(first * cols);
      want.insert(want.end(), begin, begin + std::ptrdiff_t(recvs[r][s] * cols));
    }
    want.resize(std::size_t(10 * cols), -1.0f);  // rows past the counts stay as they were
    EXPECT_TRUE(test::same_bits(got[r].exchanged, want)) << "rank " << r;
    EXPECT_TRUE(test::same_bits(got[r].broadcast, xf[1])) << "rank " << r;
  }
}

}  // namespace
}  // namespace lightcore
