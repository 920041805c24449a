/*
 * The Kubernetes sandbox ("pause") container: PID 1 of every pod, holding its namespaces.
 *
 * It sleeps until SIGINT or SIGTERM (then exits 0) and reaps the zombies re-parented to it, like
 * kubernetes/build/pause/linux/pause.c. Built static (`gcc -static -O2`) so the image is one file;
 * scripts/build-images.sh packs it as elasticserving/pause:3.10, the node's sandbox_image.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-elasticserving"

static void on_stop(int signo) {
    /* Async-signal-safe: write(2) and _exit(2) only. */
    static const char msg[] = "pause: shutting down\n";
    (void)signo;
    (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
    _exit(0);
}

static void on_child(int signo) {
    int saved = errno;
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int handle(int signo, void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("pause %s\n", VERSION);
        return 0;
    }
    if (getpid() != 1) {
        /* Not an error (tests run it directly), but nothing re-parents to us then. */
        fprintf(stderr, "pause: warning: not running as PID 1\n");
    }
    if (handle(SIGINT, on_stop, 0) < 0 || handle(SIGTERM, on_stop, 0) < 0 ||
        handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
    /* not reached */
    return 42;
}
