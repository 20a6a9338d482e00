/* A tiny static program for the docker driver tests: runs its arguments as a list of steps.
 *   out TEXT | err TEXT | env NAME    print a line (env: NAME=value)
 *   exit CODE | sleep SECS            end with CODE | sleep
 *   trap                              exit 128+signal on SIGTERM/SIGINT (PID 1 ignores them
 *                                     otherwise)
 *   wait-file PATH                    wait until PATH exists
 *   spam N                            print N lines of 100 bytes
 *   serve PORT                        answer "ok" to every TCP connection on PORT, forever
 */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_signal(int sig) { _exit(128 + sig); }

static int serve(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) {
        perror("listen");
        return 2;
    }
    printf("listening on %d\n", port);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c >= 0) {
            if (write(c, "ok\n", 3) != 3) perror("write");
            close(c);
        }
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *op = argv[i];
        const char *arg = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(op, "trap")) {
            signal(SIGTERM, on_signal);
            signal(SIGINT, on_signal);
            continue;
        }
        i++;
        if (!strcmp(op, "out")) {
            printf("%s\n", arg);
        } else if (!strcmp(op, "err")) {
            fprintf(stderr, "%s\n", arg);
        } else if (!strcmp(op, "env")) {
            const char *v = getenv(arg);
            printf("%s=%s\n", arg, v ? v : "(unset)");
        } else if (!strcmp(op, "exit")) {
            return atoi(arg);
        } else if (!strcmp(op, "sleep")) {
            sleep(atoi(arg));
        } else if (!strcmp(op, "wait-file")) {
            while (access(arg, F_OK) != 0) usleep(20000);
        } else if (!strcmp(op, "spam")) {
            char line[101];
            memset(line, 'x', 99);
            line[99] = '\n';
            line[100] = 0;
            for (long k = atol(arg); k > 0; k--) fputs(line, stdout);
        } else if (!strcmp(op, "serve")) {
            return serve(atoi(arg));
        } else {
            fprintf(stderr, "unknown step %s\n", op);
            return 99;
        }
    }
    return 0;
}
