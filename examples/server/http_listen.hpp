// Binding the server's HTTP listeners with a listen backlog fit for bursts of connections.
#pragma once

#include <httplib.h>
#include <sys/socket.h>

#include <memory>
#include <string>

namespace lightcore::server {

// The connections the kernel queues for accept() on each listener.
inline constexpr int http_listen_backlog = 4096;

// Binds `s` to host:port (port 0: any free port) as httplib does, and returns the bound port, or
// -1. Debian's cpp-httplib listens with a backlog of 5: a burst of new connections (a router
// placing a hundred requests at once) overflows it, and each connection the kernel drops then
// fails on its client as a connect or read timeout. Linux takes a second listen() on a listening
// socket as a change of its backlog, so the socket is caught as httplib creates it (its socket
// options hook, which also keeps httplib's SO_REUSEADDR) and listened on again.
inline int bind_with_backlog(httplib::Server& s, std::string const& host, int port) {
  auto fd = std::make_shared<int>(-1);
  s.set_socket_options([fd](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    *fd = sock;
  });
  int bound = -1;
  if (port == 0)
    bound = s.bind_to_any_port(host);
  else if (s.bind_to_port(host, port))
    bound = port;
  if (bound > 0 && *fd >= 0) ::listen(*fd, http_listen_backlog);
  return bound;
}

}  // namespace lightcore::server
