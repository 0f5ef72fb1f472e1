/*
 * rr: the small C workload tools of scripts/bench (loopback only).
 *
 *   rr echo PORT                      echo server on 127.0.0.1:PORT (epoll)
 *   rr sink PORT BYTES_PER_SEC [STALL_MS]  slow reader: reads each connection at this rate
 *                                     (after reading nothing for STALL_MS: a reader that stopped)
 *   rr lat  PORT COUNT SIZE WARMUP    COUNT sequential SIZE-byte round trips on one connection
 *   rr conn PORT PAR MAXCONNS MAXSEC  open, one 64-byte round trip, close; PAR in parallel
 *   rr push PORT SECONDS MAXBYTES [PAR]  write as fast as the path takes it (PAR connections, MAXBYTES each)
 *
 * Clients print one JSON line. Every loop is bounded in count and time.
 * Written in C so that the load generator costs the 2-core machine as little as
 * possible and adds the same few microseconds to every path.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr_of(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

static int listen_on(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = addr_of(port);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
    perror("listen");
    exit(2);
  }
  printf("ready %d\n", port);
  fflush(stdout);
  return fd;
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = addr_of(port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_n(int fd, char *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ---- echo server ---- */
static int echo_server(int port) {
  int lfd = listen_on(port);
  fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  static char buf[65536];
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r > 0) {
        /* Echo back; a full send buffer (never with these small messages)
         * falls back to a blocking write. */
        ssize_t off = 0;
        while (off < r) {
          ssize_t w = write(fd, buf + off, (size_t)(r - off));
          if (w < 0 && errno == EAGAIN) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
            continue;
          }
          if (w <= 0) break;
          off += w;
        }
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
      }
    }
  }
  return 0;
}

/* ---- slow sink ---- */
static long sink_rate;
static long sink_stall_ms;
static void *sink_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[16384];
  if (sink_stall_ms > 0) {
    struct timespec ts = {sink_stall_ms / 1000, (sink_stall_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  double start = now_s();
  long total = 0;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) break;
    total += r;
    double due = start + (double)total / (double)sink_rate;
    double wait = due - now_s();
    if (wait > 0) {
      struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
      nanosleep(&ts, NULL);
    }
  }
  close(fd);
  return NULL;
}

static int sink_server(int port, long rate, long stall_ms) {
  sink_rate = rate > 0 ? rate : 1;
  sink_stall_ms = stall_ms > 0 && stall_ms <= 60000 ? stall_ms : 0;
  int lfd = listen_on(port);
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    pthread_t t;
    pthread_create(&t, NULL, sink_conn, (void *)(intptr_t)c);
    pthread_detach(t);
  }
  return 0;
}

/* ---- latency client ---- */
static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int lat_client(int port, int count, int size, int warmup) {
  if (count < 1 || count > 1000000 || size < 1 || size > 65536) return 2;
  int fd = dial(port);
  if (fd < 0) {
    printf("{\"error\":\"connect: %s\"}\n", strerror(errno));
    return 1;
  }
  char *out = malloc((size_t)size), *in = malloc((size_t)size);
  memset(out, 'x', (size_t)size);
  double *rtt = malloc(sizeof(double) * (size_t)count);
  double deadline = now_s() + 60;
  for (int i = 0; i < warmup + count; i++) {
    double t0 = now_s();
    if (t0 > deadline || write_all(fd, out, (size_t)size) < 0 || read_n(fd, in, (size_t)size) < 0) {
      printf("{\"error\":\"round trip %d failed: %s\"}\n", i, strerror(errno));
      return 1;
    }
    if (i >= warmup) rtt[i - warmup] = (now_s() - t0) * 1e6;
  }
  close(fd);
  double sum = 0;
  for (int i = 0; i < count; i++) sum += rtt[i];
  qsort(rtt, (size_t)count, sizeof(double), cmp_d);
  printf("{\"count\":%d,\"p50us\":%.1f,\"p90us\":%.1f,\"p99us\":%.1f,\"minus\":%.1f,\"maxus\":%.1f,\"meanus\":%.1f}\n", count, rtt[count / 2],
         rtt[(int)(count * 0.9)], rtt[(int)(count * 0.99)], rtt[0], rtt[count - 1], sum / count);
  return 0;
}

/* ---- connection rate client ---- */
static int conn_port;
static long conn_max;
static double conn_deadline;
static atomic_long conn_started, conn_done, conn_errors;

static void *conn_worker(void *arg) {
  (void)arg;
  char out[64], in[64];
  memset(out, 'c', sizeof out);
  for (;;) {
    if (atomic_fetch_add(&conn_started, 1) >= conn_max || now_s() > conn_deadline) break;
    int fd = dial(conn_port);
    if (fd < 0) {
      atomic_fetch_add(&conn_errors, 1);
      continue;
    }
    if (write_all(fd, out, sizeof out) < 0 || read_n(fd, in, sizeof in) < 0)
      atomic_fetch_add(&conn_errors, 1);
    else
      atomic_fetch_add(&conn_done, 1);
    close(fd);
  }
  return NULL;
}

static int conn_client(int port, int par, long maxconns, double maxsec) {
  if (par < 1 || par > 256 || maxconns < 1 || maxsec <= 0 || maxsec > 120) return 2;
  conn_port = port;
  conn_max = maxconns;
  double t0 = now_s();
  conn_deadline = t0 + maxsec;
  pthread_t th[256];
  for (int i = 0; i < par; i++) pthread_create(&th[i], NULL, conn_worker, NULL);
  for (int i = 0; i < par; i++) pthread_join(th[i], NULL);
  double el = now_s() - t0;
  long done = atomic_load(&conn_done), errs = atomic_load(&conn_errors);
  printf("{\"conns\":%ld,\"errors\":%ld,\"seconds\":%.3f,\"connsPerSec\":%.1f}\n", done, errs, el, done / el);
  return 0;
}

/* ---- push client ---- */
static char push_buf[262144];

struct push_job {
  int port;
  double seconds;
  long maxbytes;
  long total;
  const char *why;
};

static void *push_one(void *arg) {
  struct push_job *j = arg;
  j->total = 0;
  j->why = "time";
  int fd = dial(j->port);
  if (fd < 0) {
    j->why = "connect failed";
    return NULL;
  }
  struct timeval tv = {0, 200000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  double end = now_s() + j->seconds;
  while (now_s() < end) {
    if (j->total >= j->maxbytes) {
      j->why = "max";
      break;
    }
    ssize_t w = write(fd, push_buf, sizeof push_buf);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (w <= 0) {
      j->why = w < 0 ? "write failed" : "closed";
      break;
    }
    j->total += w;
  }
  /* RST rather than a drain: the measurement is over. */
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
  return NULL;
}

static int push_client(int port, double seconds, long maxbytes, int par) {
  if (seconds <= 0 || seconds > 120 || par < 1 || par > 256) return 2;
  struct push_job jobs[256];
  pthread_t th[256];
  memset(push_buf, 'p', sizeof push_buf);
  double t0 = now_s();
  for (int i = 0; i < par; i++) {
    jobs[i] = (struct push_job){port, seconds, maxbytes, 0, "time"};
    pthread_create(&th[i], NULL, push_one, &jobs[i]);
  }
  long total = 0;
  const char *why = "time";
  for (int i = 0; i < par; i++) {
    pthread_join(th[i], NULL);
    total += jobs[i].total;
    if (strcmp(jobs[i].why, "time")) why = jobs[i].why;
  }
  printf("{\"bytes\":%ld,\"seconds\":%.3f,\"end\":\"%s\",\"connections\":%d}\n", total, now_s() - t0, why, par);
  return !strcmp(why, "connect failed");
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 3 && !strcmp(argv[1], "echo")) return echo_server(atoi(argv[2]));
  if (argc >= 4 && !strcmp(argv[1], "sink")) return sink_server(atoi(argv[2]), atol(argv[3]), argc >= 5 ? atol(argv[4]) : 0);
  if (argc >= 6 && !strcmp(argv[1], "lat")) return lat_client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  if (argc >= 6 && !strcmp(argv[1], "conn")) return conn_client(atoi(argv[2]), atoi(argv[3]), atol(argv[4]), atof(argv[5]));
  if (argc >= 5 && !strcmp(argv[1], "push")) return push_client(atoi(argv[2]), atof(argv[3]), atol(argv[4]), argc >= 6 ? atoi(argv[5]) : 1);
  fprintf(stderr, "usage: rr echo PORT | sink PORT BPS [STALL_MS] | lat PORT COUNT SIZE WARMUP | conn PORT PAR MAX SECS | push PORT SECS MAXBYTES [PAR]\n");
  return 2;
}
