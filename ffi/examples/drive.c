/*
 * drive: a C program that drives a real LocalAIStack daemon through liblocalaistack.
 *
 *   drive unix SOCKET STACK.yaml
 *   drive tcp ADDR TOKEN_FILE STACK.yaml
 *
 * It applies the stack (a Model `tiny` and an engine Module `chat`), waits until both are Ready,
 * asks the model, reads the plugin inventory, and checks the errors (bad YAML, an unknown object,
 * an unknown kind, an unknown model, NULL arguments) and that the last error is per thread.
 * Each result is printed as `RESULT <name> <json>` for tests/c_abi.rs to check; any failed check
 * prints `FAIL ...` and exits 1. Every string it gets is freed, so Valgrind finds no leak.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "localaistack.h"

static int failures = 0;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            failures++;                                                         \
        }                                                                       \
    } while (0)

static const char *err_or(const char *fallback) {
    const char *e = las_last_error();
    return e ? e : fallback;
}

static void result(const char *name, const char *json) {
    printf("RESULT %s %s\n", name, json ? json : "null");
    fflush(stdout);
}

/* Prints and frees a returned string. */
static void result_free(const char *name, char *json) {
    result(name, json);
    las_string_free(json);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) {
        buf[len] = '\0';
    }
    return buf;
}

/* Whether an object's JSON has a condition {"type":"Ready", ..., "status":"True"}, in any key order
 * (a condition holds no nested object). */
static int is_ready(const char *json) {
    const char *p = json;
    while ((p = strstr(p, "\"type\":\"Ready\"")) != NULL) {
        const char *open = p, *close = strchr(p, '}');
        while (open > json && *open != '{') {
            open--;
        }
        if (close) {
            const char *s = strstr(open, "\"status\":\"True\"");
            if (s && s < close) {
                return 1;
            }
        }
        p++;
    }
    return 0;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Polls las_get until the object is Ready; returns its JSON (to free) or NULL. */
static char *wait_ready(LasClient *c, const char *kind, const char *name, int seconds) {
    char *last = NULL;
    for (int i = 0; i < seconds * 5; i++) {
        las_string_free(last);
        last = las_get(c, kind, name);
        if (last && is_ready(last)) {
            return last;
        }
        sleep_ms(200);
    }
    fprintf(stderr, "FAIL %s/%s not Ready in %d s; last: %s\n", kind, name, seconds,
            last ? last : err_or("(no answer)"));
    las_string_free(last);
    failures++;
    return NULL;
}

struct worker {
    LasClient *client;
    int index;
    int ok;
};

/* Each thread gets the Ready module (a shared client), then fails its own way and checks that
 * its last error is its own. */
static void *work(void *arg) {
    struct worker *w = arg;
    w->ok = 0;
    if (las_last_error() != NULL) {
        return NULL; /* a new thread starts without an error */
    }
    char *m = las_get(w->client, "module", "chat");
    int got = m != NULL && strstr(m, "\"name\":\"chat\"") != NULL;
    las_string_free(m);
    char name[64];
    snprintf(name, sizeof name, "missing-%d", w->index);
    char *none = las_get(w->client, "module", name);
    const char *e = las_last_error();
    w->ok = got && none == NULL && e != NULL && strstr(e, name) != NULL &&
            strstr(e, "\"status\":404") != NULL;
    return NULL;
}

int main(int argc, char **argv) {
    int tcp = argc == 5 && strcmp(argv[1], "tcp") == 0;
    int unix_ = argc == 4 && strcmp(argv[1], "unix") == 0;
    if (!tcp && !unix_) {
        fprintf(stderr, "usage: drive unix SOCKET STACK.yaml | drive tcp ADDR TOKEN_FILE STACK.yaml\n");
        return 2;
    }

    /* Versions: the library matches the header it was compiled against. */
    CHECK(las_abi_version() == LAS_ABI_VERSION, "abi %u, header %u", las_abi_version(),
          LAS_ABI_VERSION);
    printf("RESULT version \"%s\"\n", las_version());

    /* NULL arguments are errors, not crashes; freeing NULL is allowed. */
    CHECK(las_client_new_unix(NULL) == NULL, "a NULL path gives no client");
    CHECK(las_last_error() && strstr(las_last_error(), "InvalidArgument"), "%s", err_or("none"));
    CHECK(las_get(NULL, "module", "chat") == NULL, "a NULL client fails");
    CHECK(las_list(NULL, NULL) == NULL, "NULL everything fails");
    CHECK(las_client_set_timeout_ms(NULL, 1) == -1, "NULL client");
    result("null_client", las_last_error());
    las_string_free(NULL);
    las_client_free(NULL);
    CHECK(las_client_new_tcp("not an address", NULL) == NULL, "a bad address gives no client");
    result("bad_addr", las_last_error());

    LasClient *c;
    char *token = NULL;
    if (tcp) {
        token = read_file(argv[3]);
        CHECK(token != NULL, "cannot read the token file %s", argv[3]);
        c = las_client_new_tcp(argv[2], token);
    } else {
        c = las_client_new_unix(argv[2]);
    }
    free(token);
    CHECK(c != NULL, "client: %s", err_or("none"));
    if (!c) {
        return 1;
    }
    CHECK(las_last_error() == NULL, "a success clears the last error");
    CHECK(las_client_set_timeout_ms(c, 120000) == 0, "timeout");
    char *stack = read_file(tcp ? argv[4] : argv[3]);
    CHECK(stack != NULL, "cannot read the stack file");

    /* Bad YAML: refused with the daemon's Status, nothing applied. */
    char *bad = las_apply_yaml(c, "apiVersion: localaistack.io/v1alpha1\nkind: Module\nmetadata: {name: [oops\n");
    CHECK(bad == NULL, "bad YAML is refused: %s", bad);
    CHECK(las_last_error() != NULL, "bad YAML sets the last error");
    result("bad_yaml", las_last_error());
    las_string_free(bad);

    /* The stack. */
    char *applied = las_apply_yaml(c, stack ? stack : "");
    CHECK(applied != NULL, "apply: %s", err_or("none"));
    result_free("apply", applied);
    free(stack);

    char *model = wait_ready(c, "model", "tiny", 120);
    result_free("model", model);
    char *chat = wait_ready(c, "module", "chat", 180);
    result_free("module", chat);

    /* Ask the model. */
    char *answer = las_chat(c, "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                               "\"max_tokens\":8,\"temperature\":0}");
    CHECK(answer != NULL && strstr(answer, "chat.completion") != NULL, "chat: %s",
          answer ? answer : err_or("none"));
    result_free("chat", answer);

    char *list = las_list(c, "models");
    CHECK(list != NULL, "list: %s", err_or("none"));
    result_free("list", list);

    char *inventory = las_plugin_inventory(c);
    CHECK(inventory != NULL, "inventory: %s", err_or("none"));
    result_free("inventory", inventory);

    /* Errors the daemon answers. */
    char *none = las_get(c, "module", "no-such-module");
    CHECK(none == NULL, "an unknown object is an error");
    result("not_found", las_last_error());
    las_string_free(none);

    if (tcp) {
        /* A wrong token: the management API refuses it. */
        LasClient *wrong = las_client_new_tcp(argv[2], "not-the-token");
        CHECK(wrong != NULL, "client: %s", err_or("none"));
        char *refused = las_list(wrong, "modules");
        CHECK(refused == NULL, "a wrong token is refused");
        result("wrong_token", las_last_error());
        las_string_free(refused);
        las_client_free(wrong);
    }

    char *kind = las_list(c, "gizmo");
    CHECK(kind == NULL, "an unknown kind is an error");
    result("bad_kind", las_last_error());
    las_string_free(kind);

    char *nomodel = las_chat(c, "{\"model\":\"no-such-model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    CHECK(nomodel == NULL, "an unknown model is an error");
    result("chat_error", las_last_error());
    las_string_free(nomodel);
    char *mine = las_last_error() ? strdup(las_last_error()) : NULL;

    /* Threads: one shared client, an error each, each its own. */
    enum { N = 4 };
    pthread_t threads[N];
    struct worker workers[N];
    for (int i = 0; i < N; i++) {
        workers[i] = (struct worker){c, i, 0};
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0, "pthread_create");
    }
    int threads_ok = 1;
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        threads_ok &= workers[i].ok;
    }
    CHECK(threads_ok, "every thread saw its own error");
    CHECK(mine && las_last_error() && strcmp(mine, las_last_error()) == 0,
          "this thread's last error is unchanged by the others: %s", err_or("none"));
    printf("RESULT threads %s\n", threads_ok ? "true" : "false");
    free(mine);

    las_client_free(c);
    if (failures) {
        fprintf(stderr, "drive: %d check(s) failed\n", failures);
        return 1;
    }
    printf("RESULT done true\n");
    return 0;
}
