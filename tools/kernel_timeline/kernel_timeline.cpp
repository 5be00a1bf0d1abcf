// kernel_timeline: a CUPTI injection library that records when every kernel of a process ran
// (kernels inside CUDA graphs included, node by node) and writes them as CSV at exit. It is what a
// decode step's critical path is read from where no Nsight Systems is installed:
//
//   CUDA_INJECTION64_PATH=liblightcore_kernel_timeline.so LIGHTCORE_TIMELINE=trace.csv <program>
//
// Columns: start_ns, end_ns (GPU timestamps), graph_id (0 outside graphs), stream, grid, block,
// name (demangled, without template arguments' parameters). CUPTI's concurrent-kernel records do
// not serialise kernels, so programmatic dependent launch and graph overlaps stay as they are.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct kernel_record {
  std::uint64_t start, end;
  std::uint32_t graph, stream;
  int grid[3], block;
  std::string name;
};

std::mutex records_mutex;
std::vector<kernel_record>* records = nullptr;  // leaked on purpose: written from atexit
constexpr std::size_t buffer_bytes = 8u << 20;

void check(CUptiResult r, char const* what) {
  if (r == CUPTI_SUCCESS) return;
  char const* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel_timeline: %s failed: %s\n", what, text ? text : "?");
}

std::string demangled(char const* name) {
  if (name == nullptr) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : name;
  std::free(d);
  // The function's name and template arguments, without its parameter list.
  int depth = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0) return s.substr(0, i);
  }
  return s;
}

void CUPTIAPI buffer_requested(std::uint8_t** buffer, std::size_t* size, std::size_t* max_records) {
  *buffer = static_cast<std::uint8_t*>(std::aligned_alloc(8, buffer_bytes));
  *size = buffer_bytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, std::uint32_t, std::uint8_t* buffer, std::size_t,
                               std::size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> const lock(records_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL &&
        record->kind != CUPTI_ACTIVITY_KIND_KERNEL)
      continue;
    auto const* k = reinterpret_cast<CUpti_ActivityKernel10 const*>(record);
    records->push_back({k->start,
                        k->end,
                        k->graphId,
                        k->streamId,
                        {k->gridX, k->gridY, k->gridZ},
                        k->blockX * k->blockY * k->blockZ,
                        demangled(k->name)});
  }
  std::free(buffer);
}

// A context's records must be flushed before the context goes (the runtime may destroy it
// before atexit handlers run).
void CUPTIAPI on_resource(void*, CUpti_CallbackDomain domain, CUpti_CallbackId id, void const*) {
  if (domain == CUPTI_CB_DOMAIN_RESOURCE && id == CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING)
    check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
}

void write_records() {
  check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
  char const* path = std::getenv("LIGHTCORE_TIMELINE");
  std::FILE* f = std::fopen(path != nullptr ? path : "kernel_timeline.csv", "w");
  if (f == nullptr) {
    std::fprintf(stderr, "kernel_timeline: cannot write %s\n", path);
    return;
  }
  std::lock_guard<std::mutex> const lock(records_mutex);
  std::fprintf(f, "start_ns,end_ns,graph_id,stream,grid,block,name\n");
  for (auto const& r : *records)
    std::fprintf(f, "%llu,%llu,%u,%u,%dx%dx%d,%d,\"%s\"\n", (unsigned long long)r.start,
                 (unsigned long long)r.end, r.graph, r.stream, r.grid[0], r.grid[1], r.grid[2],
                 r.block, r.name.c_str());
  std::fclose(f);
  std::fprintf(stderr, "kernel_timeline: %zu kernels\n", records->size());
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" __attribute__((visibility("default"))) int InitializeInjection() {
  records = new std::vector<kernel_record>();
  records->reserve(1u << 20);
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed),
        "cuptiActivityRegisterCallbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
  CUpti_SubscriberHandle subscriber = nullptr;
  check(cuptiSubscribe(&subscriber, reinterpret_cast<CUpti_CallbackFunc>(on_resource), nullptr),
        "cuptiSubscribe");
  check(cuptiEnableCallback(1, subscriber, CUPTI_CB_DOMAIN_RESOURCE,
                            CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING),
        "cuptiEnableCallback");
  std::atexit(write_records);
  return 1;
}
