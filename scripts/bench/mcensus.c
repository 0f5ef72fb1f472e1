/*
 * mcensus: where a process's malloc memory goes, by allocation site, and how
 * much of it is resident. A diagnostic for the hub-scale benchmark
 * (`scripts/bench/run --only-hub --census`), preloaded into the hub only:
 *
 *   LD_PRELOAD=mcensus.so ZTM_CENSUS_DIR=DIR node ...
 *
 * Every malloc/calloc/realloc/memalign is recorded with its call stack (six
 * frames above the allocator); free forgets it. When DIR/dump-PID appears (the
 * benchmark creates it), a watcher thread removes it and writes
 * DIR/census-PID-N.txt: one "site" line per call stack with the live count, the
 * bytes asked for and the bytes of those that are resident (mincore(2) on
 * their pages), then the stack's frames. The benchmark diffs two dumps taken
 * at two agent counts: the bytes per agent each site adds.
 *
 * It makes every allocation several times dearer (a stack walk and a lock):
 * for diagnosis only, never in a measured run.
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define LIVE_BITS 23 /* 8 M live allocations */
#define LIVE_SLOTS (1u << LIVE_BITS)
#define SITE_BITS 17
#define SITE_SLOTS (1u << SITE_BITS)
#define DEPTH 6
#define TOMBSTONE ((uintptr_t)1)

typedef struct {
  uintptr_t p;
  uint32_t size;
  uint32_t site;
} live_t;
typedef struct {
  uint64_t hash; /* 0: empty */
  int n;
  void *frame[DEPTH];
  uint64_t count, bytes, resident; /* filled by a dump */
} site_t;

static live_t *live;
static site_t *sites;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int busy; /* this thread is inside the census: don't record */
static volatile int ready;
static char dir[512];

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

/* The caller's stack as a site index; called with `mu` held. */
static uint32_t site_here(void) {
  void *f[DEPTH + 3];
  int n = backtrace(f, DEPTH + 3);
  /* f[0] is site_here, f[1] record, f[2] the interposed allocator */
  int first = n > 3 ? 3 : n, k = n - first > DEPTH ? DEPTH : n - first;
  uint64_t h = 1469598103934665603ULL;
  for (int i = 0; i < k; i++) h = (h ^ (uintptr_t)f[first + i]) * 1099511628211ULL;
  h |= 1;
  uint32_t i = (uint32_t)mix(h) & (SITE_SLOTS - 1);
  for (uint32_t probes = 0; probes < SITE_SLOTS; probes++, i = (i + 1) & (SITE_SLOTS - 1)) {
    if (sites[i].hash == h) return i;
    if (sites[i].hash == 0) {
      sites[i].hash = h;
      sites[i].n = k;
      memcpy(sites[i].frame, f + first, sizeof(void *) * (size_t)k);
      return i;
    }
  }
  return 0; /* table full: lump the rest together */
}

static void record(void *p, size_t size) {
  if (!p || !ready || busy) return;
  busy = 1;
  pthread_mutex_lock(&mu);
  uint32_t s = site_here();
  uint32_t i = (uint32_t)mix((uintptr_t)p >> 4) & (LIVE_SLOTS - 1);
  uint32_t probes = 0;
  while (live[i].p > TOMBSTONE && ++probes < LIVE_SLOTS) i = (i + 1) & (LIVE_SLOTS - 1);
  if (probes < LIVE_SLOTS) { /* else the table is full: this one goes uncounted */
    live[i].p = (uintptr_t)p;
    live[i].size = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    live[i].site = s;
  }
  pthread_mutex_unlock(&mu);
  busy = 0;
}

static void forget(void *p) {
  if (!p || !ready || busy) return;
  busy = 1;
  pthread_mutex_lock(&mu);
  uint32_t i = (uint32_t)mix((uintptr_t)p >> 4) & (LIVE_SLOTS - 1);
  /* Bounded: deleted slots stay as tombstones, so a long run can leave few
   * empty ones, and a pointer never recorded must not be searched for ever. */
  for (uint32_t probes = 0; live[i].p && probes < LIVE_SLOTS; i = (i + 1) & (LIVE_SLOTS - 1), probes++)
    if (live[i].p == (uintptr_t)p) {
      live[i].p = TOMBSTONE;
      break;
    }
  pthread_mutex_unlock(&mu);
  busy = 0;
}

void *malloc(size_t n) {
  void *p = __libc_malloc(n);
  record(p, n);
  return p;
}
void free(void *p) {
  forget(p);
  __libc_free(p);
}
void *calloc(size_t a, size_t b) {
  void *p = __libc_calloc(a, b);
  record(p, a * b);
  return p;
}
void *realloc(void *old, size_t n) {
  forget(old);
  void *p = __libc_realloc(old, n);
  record(p ? p : old, p ? n : 0);
  return p;
}
void *memalign(size_t align, size_t n) {
  void *p = __libc_memalign(align, n);
  record(p, n);
  return p;
}
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
  *out = memalign(align, n);
  return *out ? 0 : 12 /* ENOMEM */;
}

static void dump(const char *path) {
  busy = 1;
  pthread_mutex_lock(&mu);
  for (uint32_t s = 0; s < SITE_SLOTS; s++) sites[s].count = sites[s].bytes = sites[s].resident = 0;
  const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  unsigned char vec[256];
  for (uint32_t i = 0; i < LIVE_SLOTS; i++) {
    if (live[i].p <= TOMBSTONE) continue;
    site_t *s = &sites[live[i].site];
    uintptr_t a = live[i].p, e = a + live[i].size, a0 = a & ~(pg - 1);
    size_t pages = (e - a0 + pg - 1) / pg;
    s->count++;
    s->bytes += live[i].size;
    if (pages > sizeof vec) pages = sizeof vec;
    if (pages && mincore((void *)a0, pages * pg, vec) == 0)
      for (size_t k = 0; k < pages; k++)
        if (vec[k] & 1) {
          uintptr_t lo = a0 + k * pg, hi = lo + pg;
          s->resident += (hi > e ? e : hi) - (lo < a ? a : lo);
        }
  }
  char tmp[620];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (f) {
    for (uint32_t s = 0; s < SITE_SLOTS; s++) {
      if (!sites[s].count) continue;
      fprintf(f, "site %u %llu %llu %llu\n", s, (unsigned long long)sites[s].count, (unsigned long long)sites[s].bytes,
              (unsigned long long)sites[s].resident);
      char **names = backtrace_symbols(sites[s].frame, sites[s].n);
      for (int k = 0; k < sites[s].n; k++) fprintf(f, "  %p %s\n", sites[s].frame[k], names ? names[k] : "?");
      __libc_free(names);
    }
    fclose(f);
    rename(tmp, path);
  }
  pthread_mutex_unlock(&mu);
  busy = 0;
}

static void *watch(void *arg) {
  (void)arg;
  char trigger[600], out[600];
  snprintf(trigger, sizeof trigger, "%s/dump-%d", dir, (int)getpid());
  for (int n = 0;; usleep(200000)) {
    if (access(trigger, F_OK) != 0) continue;
    unlink(trigger);
    snprintf(out, sizeof out, "%s/census-%d-%d.txt", dir, (int)getpid(), n++);
    dump(out);
  }
  return NULL;
}

__attribute__((constructor)) static void init(void) {
  busy = 1;
  const char *d = getenv("ZTM_CENSUS_DIR");
  if (!d || strlen(d) >= sizeof dir) return;
  strcpy(dir, d);
  live = mmap(NULL, sizeof(live_t) * LIVE_SLOTS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  sites = mmap(NULL, sizeof(site_t) * SITE_SLOTS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (live == MAP_FAILED || sites == MAP_FAILED) return;
  void *warm[2];
  backtrace(warm, 2); /* loads the unwinder now, not inside the first malloc */
  pthread_t t;
  if (pthread_create(&t, NULL, watch, NULL) == 0) pthread_detach(t);
  busy = 0;
  ready = 1;
}
