/*
 * bench: the cost of the C ABI against plain HTTP, both from C, both over the daemon's unix
 * socket, both one connection per request (what the library does).
 *
 *   bench SOCKET KIND NAME N
 *
 * Alternates `las_get(client, KIND, NAME)` with a hand-written `GET /api/v1/KIND/NAME` on a raw
 * socket (the answer read to the end), N times each, and prints `RESULT <side> <p50_us> <p99_us>`
 * per side. benches/c_abi.rs runs it (`make bench`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "localaistack.h"

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *sorted, int n, double p) {
    return sorted[(int)((n - 1) * p + 0.5)];
}

/* One plain HTTP/1.1 GET on a fresh unix-socket connection; returns the body length or -1. */
static long raw_get(const char *socket_path, const char *request, char *buf, size_t cap) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    size_t len = strlen(request), sent = 0;
    while (sent < len) {
        ssize_t w = write(fd, request + sent, len - sent);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        sent += (size_t)w;
    }
    size_t got = 0;
    ssize_t r;
    while (got < cap - 1 && (r = read(fd, buf + got, cap - 1 - got)) > 0) {
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
        return -1;
    }
    const char *body = strstr(buf, "\r\n\r\n");
    return body ? (long)(got - (size_t)(body + 4 - buf)) : -1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench SOCKET KIND NAME N\n");
        return 2;
    }
    const char *socket_path = argv[1], *kind = argv[2], *name = argv[3];
    int n = atoi(argv[4]);
    if (n < 2) {
        fprintf(stderr, "N must be at least 2\n");
        return 2;
    }
    LasClient *c = las_client_new_unix(socket_path);
    if (!c) {
        fprintf(stderr, "client: %s\n", las_last_error());
        return 1;
    }
    char request[512];
    snprintf(request, sizeof request,
             "GET /api/v1/%s/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
             "Accept: application/json\r\n\r\n",
             kind, name);
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    double *lib = malloc(sizeof(double) * (size_t)n);
    double *raw = malloc(sizeof(double) * (size_t)n);
    if (!buf || !lib || !raw) {
        return 1;
    }
    int warmup = n / 10 + 10;
    for (int i = -warmup; i < n; i++) {
        double t0 = now_us();
        char *o = las_get(c, kind, name);
        double t1 = now_us();
        long body = raw_get(socket_path, request, buf, cap);
        double t2 = now_us();
        if (!o || body <= 0) {
            fprintf(stderr, "request failed: %s\n", o ? "plain HTTP" : las_last_error());
            las_string_free(o);
            return 1;
        }
        las_string_free(o);
        if (i >= 0) {
            lib[i] = t1 - t0;
            raw[i] = t2 - t1;
        }
    }
    qsort(lib, (size_t)n, sizeof(double), cmp);
    qsort(raw, (size_t)n, sizeof(double), cmp);
    printf("RESULT plain %.1f %.1f\n", pct(raw, n, 0.5), pct(raw, n, 0.99));
    printf("RESULT las_get %.1f %.1f\n", pct(lib, n, 0.5), pct(lib, n, 0.99));
    free(buf);
    free(lib);
    free(raw);
    las_client_free(c);
    return 0;
}
