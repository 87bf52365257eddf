/* lockd jepsen: shift one process's wall clock, and only its wall clock.
 *
 * Built by the harness at run time (cc -shared -fPIC clockshim.c -ldl) and put in
 * LD_PRELOAD of each redis-server. CLOCK_REALTIME (and _COARSE), gettimeofday() and
 * time() read the real clock plus an offset in nanoseconds: the int64 at the start of
 * the file named by LOCKD_CLOCK_FILE, mapped shared, so the harness moves the clock by
 * rewriting it. Monotonic clocks are left alone (Redis measures TTLs on the wall clock,
 * timeouts on the monotonic one). The real functions are called directly and nothing
 * here reads a clock, so nothing recurses (Debian's libfaketime does, with redis-server).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static const volatile int64_t *offset_file;

static void load(void) {
    if (real_clock_gettime == NULL) {
        real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    }
}

__attribute__((constructor)) static void init(void) {
    load();
    const char *path = getenv("LOCKD_CLOCK_FILE");
    if (path == NULL) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) offset_file = (const volatile int64_t *)p;
}

static int64_t offset_ns(void) {
    return offset_file == NULL ? 0 : __atomic_load_n(offset_file, __ATOMIC_RELAXED);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    load();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + offset_ns();
        int64_t sec = ns / 1000000000, rem = ns % 1000000000;
        if (rem < 0) {
            rem += 1000000000;
            sec -= 1;
        }
        ts->tv_sec = (time_t)sec;
        ts->tv_nsec = (long)rem;
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
