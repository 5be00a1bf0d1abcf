// shm_region: mode 0600, removal by the owner, stale segments of dead owners, a live owner's
// segment refused, layout checks on open(), name rules, and removal on SIGTERM.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "ipc_test_util.hpp"
#include "lightcore/ipc/process.hpp"
#include "lightcore/ipc/shm_region.hpp"
#include "lightcore/ipc/signal_cleanup.hpp"

namespace lightcore {
namespace {

using ipc::region_layout;
using ipc::shm_region;
using test::shm_exists;
using test::unique_shm_name;

TEST(ShmRegion, CreatedWithMode0600AndRemovedByOwner) {
  auto const name = unique_shm_name("mode");
  mode_t const old_umask = ::umask(0);  // a permissive umask must not widen the mode
  {
    auto r = shm_region::create(name, 1000);
    ::umask(old_umask);
    struct stat st = {};
    ASSERT_EQ(::fstat(r.fd(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(st.st_size, static_cast<off_t>(sizeof(ipc::region_header) + 1000));
    EXPECT_TRUE(r.is_owner());
    EXPECT_TRUE(shm_exists(name));
    auto const self = ipc::self_identity();
    EXPECT_EQ(r.header().owner_pid, self.pid);
    EXPECT_EQ(r.header().owner_start_ticks, self.start_ticks);
    EXPECT_NE(self.start_ticks, 0u);

    // An opener sees the creator's bytes and does not remove the segment.
    std::memset(r.payload(), 0x5a, 1000);
    {
      auto o = shm_region::open(name);
      EXPECT_FALSE(o.is_owner());
      EXPECT_EQ(o.payload_bytes(), 1000u);
      EXPECT_EQ(static_cast<unsigned char const*>(o.payload())[999], 0x5a);
    }
    EXPECT_TRUE(shm_exists(name));
    shm_region moved = std::move(r);  // ownership moves with the object
    EXPECT_TRUE(shm_exists(name));
  }
  ::umask(old_umask);
  EXPECT_FALSE(shm_exists(name));
}

TEST(ShmRegion, StaleSegmentOfDeadOwnerIsReplaced) {
  auto const name = unique_shm_name("stale");
  // The child creates the segment and dies without cleaning up, as a crashed run would.
  pid_t const child = test::fork_child([&] {
    auto r = shm_region::create(name, 64);
    static_cast<unsigned char*>(r.payload())[0] = 7;
    ::_exit(0);  // no destructor: the segment stays behind
    return true;
  });
  test::expect_child_ok(child);
  ASSERT_TRUE(shm_exists(name));
  {
    auto const stale = shm_region::open(name);
    EXPECT_EQ(stale.header().owner_pid, child);
    EXPECT_FALSE(ipc::is_alive({stale.header().owner_pid, stale.header().owner_start_ticks}));
  }
  auto r = shm_region::create(name, 128);
  EXPECT_TRUE(r.is_owner());
  EXPECT_EQ(r.payload_bytes(), 128u);
  EXPECT_EQ(static_cast<unsigned char const*>(r.payload())[0], 0) << "not a fresh segment";
  EXPECT_EQ(r.header().owner_pid, ::getpid());
}

TEST(ShmRegion, LiveOwnerIsAClearError) {
  auto const name = unique_shm_name("live");
  auto r = shm_region::create(name, 64);
  EXPECT_THROW_WITH(shm_region::create(name, 64), "in use by live process");
  EXPECT_TRUE(shm_exists(name));  // the live owner's segment is left alone

  // A recorded pid that now belongs to another process (different start time) is dead.
  auto const self = ipc::self_identity();
  EXPECT_TRUE(ipc::is_alive(self));
  EXPECT_FALSE(ipc::is_alive({self.pid, self.start_ticks + 1}));
  EXPECT_FALSE(ipc::is_alive({0, 0}));
}

TEST(ShmRegion, OpenChecksLayoutAndSize) {
  auto const name = unique_shm_name("layout");
  region_layout const v1{0x1122334455667788ull, 1};
  region_layout const v2{0x1122334455667788ull, 2};
  region_layout const other{0x8877665544332211ull, 1};
  auto r = shm_region::create(name, 256, v1);
  EXPECT_NO_THROW(shm_region::open(name, v1));
  EXPECT_THROW_WITH(shm_region::open(name, v2), "layout version 1; this build reads 2");
  EXPECT_THROW_WITH(shm_region::open(name, other), "magic");
  EXPECT_THROW_WITH(shm_region::open(unique_shm_name("missing")), "cannot open");

  // A segment shorter than the header, and one whose size disagrees with its header.
  auto const tiny = unique_shm_name("tiny");
  int fd = ::shm_open(tiny.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 16), 0);
  ::close(fd);
  EXPECT_THROW_WITH(shm_region::open(tiny, v1), "too small");
  ::shm_unlink(tiny.c_str());

  fd = ::shm_open(name.c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 128), 0);  // cut the 256-byte payload short
  ::close(fd);
  EXPECT_THROW_WITH(shm_region::open(name, v1), "truncated");
}

TEST(ShmRegion, NamesArePerInstanceAndChecked) {
  EXPECT_EQ(ipc::instance_name("lightcore", 1234, "requests"), "/lightcore.1234.requests");
  EXPECT_THROW_WITH(ipc::instance_name("light/core", 1, "x"), "allowed: letters");
  EXPECT_THROW_WITH(ipc::instance_name("", 1, "x"), "allowed 1..100");
  EXPECT_THROW_WITH(ipc::instance_name("lc", 1, "a.b"), "holds '.'");
  EXPECT_THROW_WITH(shm_region::create("no-slash", 8), "is not allowed");
  EXPECT_THROW_WITH(shm_region::create("/a/b", 8), "is not allowed");
  EXPECT_THROW_WITH(shm_region::create(unique_shm_name("zero"), 0), "payload of 0 bytes");
}

TEST(ShmRegion, RemoveStaleRemovesOnlyDeadOwners) {
  std::string const prefix = "lcstale" + std::to_string(::getpid());
  auto const dead1 = ipc::instance_name(prefix, 1, "a");
  auto const dead2 = ipc::instance_name(prefix, 1, "b");
  auto const alive = ipc::instance_name(prefix, 2, "c");
  auto const unrelated = unique_shm_name("unrelated");
  auto keep = shm_region::create(alive, 64);
  auto other = shm_region::create(unrelated, 64);
  pid_t const child = test::fork_child([&] {
    auto a = shm_region::create(dead1, 64);
    auto b = shm_region::create(dead2, 64);
    ::_exit(0);
    return true;
  });
  test::expect_child_ok(child);
  ASSERT_TRUE(shm_exists(dead1) && shm_exists(dead2));
  EXPECT_EQ(ipc::remove_stale(prefix), 2);
  EXPECT_FALSE(shm_exists(dead1));
  EXPECT_FALSE(shm_exists(dead2));
  EXPECT_TRUE(shm_exists(alive));
  EXPECT_TRUE(shm_exists(unrelated));
  EXPECT_EQ(ipc::remove_stale(prefix), 0);
}

TEST(ShmRegion, SigtermRemovesRegisteredSegments) {
  auto const name = unique_shm_name("sigterm");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t const child = test::fork_child([&] {
    ::close(ready[0]);
    ipc::install_signal_cleanup();
    auto r = shm_region::create(name, 64);
    char const byte = 1;
    if (::write(ready[1], &byte, 1) != 1) return false;
    for (;;) ::pause();  // until SIGTERM
    return true;
  });
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "the child did not create its segment";
  ::close(ready[0]);
  EXPECT_TRUE(shm_exists(name));
  ASSERT_EQ(::kill(child, SIGTERM), 0);
  int const status = test::wait_child(child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child should die of the re-raised SIGTERM";
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_FALSE(shm_exists(name)) << "the handler did not unlink " << name;
}

TEST(ShmRegion, SignalRegistryTracksOwnedSegments) {
  auto const name = unique_shm_name("registry");
  EXPECT_TRUE(ipc::register_for_signal_cleanup(name));
  ipc::unregister_from_signal_cleanup(name);
  std::string const too_long = "/" + std::string(300, 'a');
  EXPECT_FALSE(ipc::register_for_signal_cleanup(too_long));
}

}  // namespace
}  // namespace lightcore
