// Where memory lives: the host, or one CUDA device.
#pragma once

#include <cstdint>
#include <ostream>

namespace lightcore {

enum class device_kind : std::uint8_t { cpu, cuda };

struct device {
  device_kind kind = device_kind::cpu;
  int index = 0;  // CUDA ordinal; 0 for the host

  static constexpr device cpu() noexcept { return {device_kind::cpu, 0}; }
  static constexpr device cuda(int ordinal) noexcept { return {device_kind::cuda, ordinal}; }
  constexpr bool is_cpu() const noexcept { return kind == device_kind::cpu; }
  constexpr bool is_cuda() const noexcept { return kind == device_kind::cuda; }
  friend constexpr bool operator==(device, device) = default;
};

inline std::ostream& operator<<(std::ostream& os, device d) {
  return d.is_cpu() ? (os << "cpu") : (os << "cuda:" << d.index);
}

}  // namespace lightcore
