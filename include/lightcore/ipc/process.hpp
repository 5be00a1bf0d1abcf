// Process identity for shared-memory ownership: a pid plus the process start time, so that a
// segment left by a crashed run is recognised even when its pid has been reused since.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>

namespace lightcore::ipc {

// One running process: pid and start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat). A pid is reused by the kernel; the pair is not.
struct process_identity {
  std::int32_t pid = 0;
  std::uint64_t start_ticks = 0;
};

namespace detail {

struct proc_stat {
  char state = '?';  // R, S, D, Z (zombie), X (dead), ...
  std::uint64_t start_ticks = 0;
};

// Parses /proc/<pid>/stat. The command name (field 2) may hold spaces and parentheses, so the
// fields are read after the last ')'.
inline std::optional<proc_stat> read_proc_stat(std::int32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  if (!in) return std::nullopt;
  std::string const text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto const close = text.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 1));
  proc_stat s;
  fields >> s.state;  // field 3
  std::string skip;
  for (int field = 4; field < 22; ++field) fields >> skip;
  fields >> s.start_ticks;  // field 22
  if (!fields) return std::nullopt;
  return s;
}

}  // namespace detail

// The calling process's identity.
inline process_identity self_identity() {
  process_identity id;
  id.pid = static_cast<std::int32_t>(::getpid());
  if (auto const s = detail::read_proc_stat(id.pid)) id.start_ticks = s->start_ticks;
  return id;
}

// True while the process `id` names still runs: the pid exists, is not a zombie, and started
// at the recorded time (a different start time means the pid now belongs to another process).
inline bool is_alive(process_identity const& id) {
  if (id.pid <= 0) return false;
  auto const s = detail::read_proc_stat(id.pid);
  if (!s) return false;
  if (s->state == 'Z' || s->state == 'X' || s->state == 'x') return false;
  return s->start_ticks == id.start_ticks;
}

}  // namespace lightcore::ipc
