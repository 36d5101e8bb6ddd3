/*
 * LD_PRELOAD shim for Debian 12's linux.uml (6.1) on hosts with a large XSAVE area.
 *
 * Why: UML 6.1 saves and restores a process's FPU/vector registers with
 * ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE) using a fixed 832-byte buffer (x87, SSE, AVX).
 * The host kernel accepts a SETREGSET only with its whole XSAVE size (2696 bytes with AVX-512
 * and PKU, 11008 with AMX), so on such CPUs every UML process dies at its first context switch:
 * "userspace - ptrace set fp regs failed, errno = 14" and a kernel panic in init.
 * Later kernels ask the host for its size; this shim does the same for 6.1.
 *
 * How: a GETREGSET is done with the host's full size; UML gets the part it knows, and the rest
 * (AVX-512, PKRU, ...) is kept here, keyed by UML's buffer (one per UML task). A SETREGSET sends
 * UML's part plus the rest kept for that buffer, so the extended registers of each task are
 * saved and restored like the others. Every other ptrace request passes through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NT_X86_XSTATE_NOTE 0x202
#define PROBE_SIZE 65536
#define BUCKETS 4096

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

struct tail {
	const void *key; /* UML's register buffer */
	struct tail *next;
	unsigned char bytes[];
};

static ptrace_fn real_ptrace;
static size_t host_size;     /* the host's whole XSAVE size, learnt from the first GETREGSET */
static unsigned char *bounce; /* host_size bytes */
static struct tail *table[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct tail **slot(const void *key)
{
	struct tail **p = &table[((uintptr_t)key >> 4) % BUCKETS];
	while (*p && (*p)->key != key)
		p = &(*p)->next;
	return p;
}

/* The regset's size is what the kernel reports back for an oversized buffer. */
static void learn(pid_t pid)
{
	unsigned char *probe = malloc(PROBE_SIZE);
	struct iovec iov = { probe, PROBE_SIZE };

	if (probe && real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &iov) == 0) {
		bounce = malloc(iov.iov_len);
		if (bounce)
			host_size = iov.iov_len;
	}
	free(probe);
}

static long xstate(enum __ptrace_request request, pid_t pid, struct iovec *iov)
{
	struct iovec whole;
	struct tail **p;
	size_t known, rest;
	long rc;

	if (!host_size)
		learn(pid);
	if (!host_size || iov->iov_len >= host_size)
		return real_ptrace(request, pid, (void *)NT_X86_XSTATE_NOTE, iov);
	known = iov->iov_len;
	rest = host_size - known;
	whole.iov_base = bounce;
	whole.iov_len = host_size;
	p = slot(iov->iov_base);
	if (request == PTRACE_GETREGSET) {
		rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &whole);
		if (rc < 0)
			return rc;
		memcpy(iov->iov_base, bounce, known);
		if (!*p) {
			*p = calloc(1, sizeof(struct tail) + rest);
			if (*p)
				(*p)->key = iov->iov_base;
		}
		if (*p)
			memcpy((*p)->bytes, bounce + known, rest);
		return 0;
	}
	/* SETREGSET: a task never saved here (new) gets the host process's current rest. */
	if (*p) {
		memcpy(bounce + known, (*p)->bytes, rest);
	} else {
		rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &whole);
		if (rc < 0)
			return rc;
	}
	memcpy(bounce, iov->iov_base, known);
	return real_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &whole);
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	pid_t pid;
	void *addr, *data;
	long rc;

	va_start(ap, request);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);
	if (!real_ptrace)
		real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	if ((request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) &&
	    (uintptr_t)addr == NT_X86_XSTATE_NOTE && data) {
		pthread_mutex_lock(&lock);
		rc = xstate(request, pid, (struct iovec *)data);
		pthread_mutex_unlock(&lock);
		return rc;
	}
	return real_ptrace(request, pid, addr, data);
}
