// Open-loop arrivals: request i of an open-loop run starts at arrival_times(...)[i] seconds after
// the run's origin. Inter-arrival gaps are exponential with mean 1 / rate (a Poisson process),
// drawn from the seed with splitmix64, so a seed gives the same schedule on every platform.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "bench/serving/workload.hpp"
#include "lightcore/core/error.hpp"

namespace lightcore::loadgen {

// Arrival times in seconds (non-decreasing, the first one gap after 0) of `count` requests at
// `rate` requests/s; with count 0, every arrival before `horizon_s` seconds.
inline std::vector<double> arrival_times(std::uint64_t seed, double rate, std::int64_t count,
                                         double horizon_s = 0.0) {
  LC_CHECK(rate > 0.0 && std::isfinite(rate),
           "request rate " << rate << " is not allowed; it must be a finite number > 0");
  LC_CHECK(count > 0 || horizon_s > 0.0,
           "arrival_times: give a count (> 0) or a horizon in seconds (> 0)");
  detail::splitmix64 rng{seed ^ 0xA5A5'5A5A'C3C3'3C3Cull};
  std::vector<double> out;
  double t = 0.0;
  for (;;) {
    double const u = 1.0 - rng.uniform();  // (0, 1]: log is finite
    t += -std::log(u) / rate;
    if (count > 0 ? std::int64_t(out.size()) >= count : t >= horizon_s) break;
    out.push_back(t);
  }
  return out;
}

}  // namespace lightcore::loadgen
