/* alternate.c: wall time of whole processes, run in turn.
 *
 *   alternate ROUNDS PREFIX STDIN NAME PROGRAM ARGS... [::: NAME PROGRAM ARGS...]...
 *
 * Each round runs every command once (the order reversed every other round), each with STDIN as its
 * standard input and its output discarded, and writes PREFIX-NAME.json in hyperfine's export shape
 * ({"results": [{"median": s, "times": [s, ...]}]}). The differences between start-up floors are a
 * fraction of a millisecond, less than this machine's drift between two hyperfine runs made a minute
 * apart; in turn, each command sees the same drift. A command that exits non-zero fails the whole run. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

enum { MAX_COMMANDS = 8 };

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: alternate ROUNDS PREFIX STDIN NAME PROGRAM ARGS... [::: NAME PROGRAM ARGS...]...\n");
        return 2;
    }
    int rounds = atoi(argv[1]);
    const char *prefix = argv[2], *input = argv[3];
    char **commands[MAX_COMMANDS];
    int count = 0;
    commands[count++] = &argv[4];
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], ":::") == 0) {
            argv[i] = NULL;
            if (count == MAX_COMMANDS || i + 2 >= argc) {
                fprintf(stderr, "alternate: at most %d commands, each a name and a program\n", MAX_COMMANDS);
                return 2;
            }
            commands[count++] = &argv[i + 1];
        }
    }
    if (rounds < 1) {
        fprintf(stderr, "alternate: ROUNDS must be a positive number\n");
        return 2;
    }
    double *times = calloc((size_t)rounds * count, sizeof *times);
    if (!times) return 1;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, input, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < count; k++) {
            int c = round % 2 ? count - 1 - k : k;
            char **command = commands[c] + 1; /* after its name */
            struct timespec start, end;
            pid_t pid;
            int status;
            clock_gettime(CLOCK_MONOTONIC, &start);
            int error = posix_spawn(&pid, command[0], &actions, NULL, command, environ);
            if (error) {
                fprintf(stderr, "alternate: %s: %s\n", command[0], strerror(error));
                return 1;
            }
            if (waitpid(pid, &status, 0) < 0) return 1;
            clock_gettime(CLOCK_MONOTONIC, &end);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "alternate: %s (%s) exited with status %d\n", commands[c][0], command[0], status);
                return 1;
            }
            times[c * rounds + round] = (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
        }
    }
    for (int c = 0; c < count; c++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%s.json", prefix, commands[c][0]);
        FILE *out = fopen(path, "w");
        if (!out) {
            perror(path);
            return 1;
        }
        double *mine = &times[c * rounds];
        double *sorted = malloc(sizeof *sorted * rounds);
        if (!sorted) return 1;
        memcpy(sorted, mine, sizeof *sorted * rounds);
        qsort(sorted, rounds, sizeof *sorted, compare);
        double median = rounds % 2 ? sorted[rounds / 2] : (sorted[rounds / 2 - 1] + sorted[rounds / 2]) / 2;
        fprintf(out, "{\"results\": [{\"command\": \"%s\", \"median\": %.9f, \"times\": [", commands[c][0], median);
        for (int r = 0; r < rounds; r++) fprintf(out, "%s%.9f", r ? ", " : "", mine[r]);
        fprintf(out, "]}]}\n");
        free(sorted);
        if (fclose(out) != 0) {
            perror(path);
            return 1;
        }
    }
    return 0;
}
