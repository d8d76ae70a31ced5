/* The pod sandbox's process: holds the pod's namespaces open and does
 * nothing else. It is PID 1 of the pod when the pod shares its process
 * namespace, so it reaps orphans, and it exits on SIGINT/SIGTERM (PID 1
 * gets no default action for them). No registry is reachable here, so this
 * replaces registry.k8s.io/pause. Built with gcc -static by images.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

static void quit(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    struct sigaction reaper = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    struct sigaction stop = {.sa_handler = quit};
    sigaction(SIGCHLD, &reaper, 0);
    sigaction(SIGINT, &stop, 0);
    sigaction(SIGTERM, &stop, 0);
    for (;;)
        pause();
}
