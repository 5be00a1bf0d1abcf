// lightcore_sse_floor: the loopback HTTP floor of a streaming /v1/completions reply. It answers
// at once, with max_tokens chunks of one character, the usage chunk and [DONE]; no tokeniser, no
// engine. lightcore_loadgen against it measures what the HTTP layer and the client cost alone.
// Usage: lightcore_sse_floor PORT [THREADS]
#include <httplib.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: lightcore_sse_floor PORT [THREADS (default 64)]\n";
    return 2;
  }
  int const port = std::atoi(argv[1]);
  int const threads = argc > 2 ? std::atoi(argv[2]) : 64;
  httplib::Server server;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(std::size_t(threads)); };
  server.set_tcp_nodelay(true);
  server.Post("/v1/completions", [](httplib::Request const& req, httplib::Response& res) {
    auto const body = nlohmann::json::parse(req.body, nullptr, false);
    int const max_tokens = body.is_object() ? body.value("max_tokens", 16) : 16;
    auto const prompt = body.is_object() && body.contains("prompt") ? body["prompt"].size() : 0;
    auto sent = std::make_shared<int>(0);
    res.set_chunked_content_provider("text/event-stream", [=](std::size_t,
                                                              httplib::DataSink& sink) {
      std::string out;
      if (*sent < max_tokens) {
        out =
            "data: " +
            nlohmann::json{{"choices", {{{"index", 0}, {"text", "t"}, {"finish_reason", nullptr}}}}}
                .dump() +
            "\n\n";
        ++*sent;
        return sink.write(out.data(), out.size());
      }
      out =
          "data: " +
          nlohmann::json{{"choices", {{{"index", 0}, {"text", ""}, {"finish_reason", "length"}}}}}
              .dump() +
          "\n\ndata: " +
          nlohmann::json{{"choices", nlohmann::json::array()},
                         {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", max_tokens}}}}
              .dump() +
          "\n\ndata: [DONE]\n\n";
      sink.write(out.data(), out.size());
      sink.done();
      return true;
    });
  });
  std::cout << "lightcore_sse_floor: http://127.0.0.1:" << port << std::endl;
  return server.listen("127.0.0.1", port) ? 0 : 1;
}
