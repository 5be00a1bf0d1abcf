// A project outside lightcore's tree, built against the installed package.
#include <cstdio>

#include "lightcore/backend/cpu.hpp"
#include "lightcore/core/dtype.hpp"
#include "lightcore/memory/cache_tensor_manager.hpp"

int main() {
  lightcore::backend::cpu host;
  lightcore::memory::cache_tensor_manager<lightcore::backend::cpu> mgr(host);
  auto x = mgr.acquire<float>("consumer.x", {4, 8});
  auto v = x.as<float, 2>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) v(i, j) = float(lightcore::bf16(float(i * 8 + j)));
  float const last = v(3, 7);
  if (last != 31.0f) return 1;
  std::printf("lightcore consumer: ok (%s)\n", lightcore::name_of(x.view().type()).data());
  return 0;
}
