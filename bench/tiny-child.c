/*
 * The smallest stand-in for `codex app-server` that a Supervisor accepts as a
 * live child, for the lookup bench only: it prints the banner with a loopback
 * URL on stderr and answers every HTTP request (/readyz) with 200. It speaks
 * no WebSocket. About a megabyte of memory per process, so the bench can keep
 * ten thousand children (and their loopback tokens) alive on a small machine.
 * The bench compiles it with `cc` at run time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) return 1;
  socklen_t len = sizeof a;
  getsockname(s, (struct sockaddr *)&a, &len);
  int port = ntohs(a.sin_port);
  fprintf(stderr, "codex app-server (WebSockets)\n  listening on: ws://127.0.0.1:%d\n  readyz: http://127.0.0.1:%d/readyz\n", port, port);
  static const char ok[] = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
  char buf[2048];
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    size_t got = 0;
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
      got += (size_t)n;
      if (memmem(buf, (size_t)n, "\r\n\r\n", 4) != NULL || got > 65536) break;
    }
    if (write(c, ok, sizeof ok - 1) < 0) { /* the prober went away */ }
    close(c);
  }
}
