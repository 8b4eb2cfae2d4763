/* probe: the timing helpers of bench/run.sh, where a shell or Python loop would be the bottleneck.
 *
 *   probe now                               CLOCK_MONOTONIC in ns (the clock every other mode uses)
 *   probe exec T0FILE|- CMD [ARGS...]        write the monotonic time to T0FILE (unless -), then exec CMD
 *                                           (same pid: the shell's $! is the server, the time is its exec),
 *                                           with SIGTERM as its parent-death signal: a bench killed even
 *                                           by SIGKILL leaves no server behind
 *   probe wait tcp|udp PORT TIMEOUT_MS [PID] until 127.0.0.1:PORT serves: tcp: a connection reads >= 1 byte
 *                                           then EOF; udp: a datagram is echoed. Exit 1 at the deadline,
 *                                           or as soon as PID (the server) has exited.
 *   probe up LO HI T0FILE TIMEOUT_MS         until every TCP port LO..HI on 127.0.0.1 is listening (one
 *                                           sock_diag netlink dump per poll, no connection needed), then
 *                                           until a connection to HI is served; prints
 *                                           `listen_ms=X serve_ms=Y` counted from the time in T0FILE.
 *                                           Start it before the server: it never misses the moment.
 *   probe count LO HI                       how many TCP ports LO..HI on 127.0.0.1 are listening now
 *   probe hup PID PORT TIMEOUT_MS            SIGHUP to PID, then until a connection to PORT is served;
 *                                           prints `answer_ms=X` from the signal.
 *
 * Polls sleep 50 µs between tries (PROBE_POLL_US; `up` sleeps longer when its dumps get dearer), so the
 * prober leaves the other core to the server.
 * Loopback only: every address here is 127.0.0.1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long poll_us = 50;

static void pause_us(long us) {
  struct timespec t = {.tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000};
  nanosleep(&t, 0);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  return a;
}

/* One TCP exchange: connect, read to EOF (at most 2 s), 1 if at least one byte came. */
static int tcp_served(int port) {
  struct sockaddr_in a = loopback(port);
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), got = 0;
  if (s < 0) return 0;
  struct timeval tv = {.tv_sec = 2};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(s, (void *)&a, sizeof a) == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = read(s, buf, sizeof buf)) > 0) got += n;
    if (n < 0) got = 0;
  }
  struct linger lg = {1, 0}; /* RST: no TIME_WAIT left behind */
  setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(s);
  return got > 0;
}

static int udp_served(int port) {
  struct sockaddr_in a = loopback(port);
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ok = 0;
  if (s < 0) return 0;
  struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[64];
  if (connect(s, (void *)&a, sizeof a) == 0 && send(s, "probe", 5, 0) == 5) ok = recv(s, buf, sizeof buf, 0) > 0;
  close(s);
  return ok;
}

/* How many TCP sockets listen on 127.0.0.1:LO..HI, from one sock_diag dump; -1 on error. */
static int listening(int nl, int lo, int hi) {
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 r;
  } req = {
      .nlh = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
      .r = {.sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = 1 << TCP_LISTEN},
  };
  if (send(nl, &req, sizeof req, 0) < 0) return -1;
  static char buf[1 << 16] __attribute__((aligned(8)));
  uint32_t want = htonl(INADDR_LOOPBACK);
  int count = 0;
  for (;;) {
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    if (n < 0) return -1;
    for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return count;
      if (h->nlmsg_type == NLMSG_ERROR) return -1;
      struct inet_diag_msg *m = NLMSG_DATA(h);
      int port = ntohs(m->id.idiag_sport);
      if (m->id.idiag_src[0] == want && port >= lo && port <= hi) count++;
    }
  }
}

/* 1 while PID runs: it exists and is not a zombie (a server not reaped yet still "exists"). */
static int running(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static long long read_t0(const char *path) {
  FILE *f = fopen(path, "r");
  long long t0 = 0;
  if (!f || fscanf(f, "%lld", &t0) != 1) t0 = 0;
  if (f) fclose(f);
  return t0;
}

static int usage(void) {
  fprintf(stderr, "usage: probe now | exec T0FILE CMD... | wait tcp|udp PORT TIMEOUT_MS [PID] | count LO HI |\n"
                  "       up LO HI T0FILE TIMEOUT_MS | hup PID PORT TIMEOUT_MS\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage();
  const char *mode = argv[1];
  if (getenv("PROBE_POLL_US")) poll_us = atol(getenv("PROBE_POLL_US"));
  if (!strcmp(mode, "now")) {
    printf("%lld\n", now_ns());
    return 0;
  }
  if (!strcmp(mode, "exec") && argc >= 4) {
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != parent) return 2; /* the bench is already gone */
    if (strcmp(argv[2], "-")) {
      FILE *f = fopen(argv[2], "w");
      if (!f) return perror(argv[2]), 2;
      fprintf(f, "%lld\n", now_ns());
      fclose(f);
    }
    execv(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
  }
  if (!strcmp(mode, "wait") && (argc == 5 || argc == 6)) {
    int udp = !strcmp(argv[2], "udp"), port = atoi(argv[3]);
    pid_t pid = argc == 6 ? atoi(argv[5]) : 0;
    long long deadline = now_ns() + atoll(argv[4]) * 1000000LL;
    while (now_ns() < deadline) {
      if (udp ? udp_served(port) : tcp_served(port)) return 0;
      if (pid && !running(pid)) {
        fprintf(stderr, "probe: the server exited before it served %s port %d\n", argv[2], port);
        return 1;
      }
      pause_us(2000);
    }
    fprintf(stderr, "probe: nothing served %s port %d within %s ms\n", argv[2], port, argv[4]);
    return 1;
  }
  if (!strcmp(mode, "count") && argc == 4) {
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    int seen = nl < 0 ? -1 : listening(nl, atoi(argv[2]), atoi(argv[3]));
    if (seen < 0) return perror("sock_diag"), 2;
    printf("%d\n", seen);
    return 0;
  }
  if (!strcmp(mode, "up") && argc == 6) {
    int lo = atoi(argv[2]), hi = atoi(argv[3]), want = hi - lo + 1;
    long long deadline = now_ns() + atoll(argv[5]) * 1000000LL, t_listen = 0, t_serve = 0;
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG), seen = 0;
    if (nl < 0) return perror("netlink"), 2;
    /* A dump of 1,000 listeners costs the kernel ~0.5 ms: sleep twice the last dump's time (at
     * least poll_us) so the prober takes at most a third of a core from the server it times. The
     * moment is the start of the first dump that sees them all: off by at most one sleep + dump. */
    while (now_ns() < deadline) {
      long long t = now_ns();
      seen = listening(nl, lo, hi);
      if (seen < 0) return perror("sock_diag"), 2;
      if (seen >= want) {
        t_listen = t;
        break;
      }
      long spent_us = (now_ns() - t) / 1000;
      pause_us(2 * spent_us > poll_us ? 2 * spent_us : poll_us);
    }
    while (t_listen && now_ns() < deadline) {
      if (tcp_served(hi)) {
        t_serve = now_ns();
        break;
      }
      pause_us(poll_us);
    }
    long long t0 = read_t0(argv[4]);
    if (!t_serve || !t0) {
      fprintf(stderr, "probe: %d of %d ports listening, last %s within %s ms\n", seen < 0 ? 0 : seen, want,
              t_listen ? "not served" : "not tried", argv[5]);
      return 1;
    }
    printf("listen_ms=%.3f serve_ms=%.3f\n", (t_listen - t0) / 1e6, (t_serve - t0) / 1e6);
    return 0;
  }
  if (!strcmp(mode, "hup") && argc == 5) {
    pid_t pid = atoi(argv[2]);
    int port = atoi(argv[3]);
    long long t0 = now_ns(), deadline = t0 + atoll(argv[4]) * 1000000LL;
    if (kill(pid, SIGHUP)) return perror("kill"), 2;
    while (now_ns() < deadline) {
      if (tcp_served(port)) {
        printf("answer_ms=%.3f\n", (now_ns() - t0) / 1e6);
        return 0;
      }
      pause_us(poll_us);
    }
    fprintf(stderr, "probe: port %d not served within %s ms of SIGHUP\n", port, argv[4]);
    return 1;
  }
  return usage();
}
