/*
 * LD_PRELOAD shim for Debian 12's linux.uml (6.1) on hosts with a large XSAVE area.
 *
 * Why: UML saves and restores a process's FPU/vector registers with
 * ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE) and a buffer of the size it sees for a process
 * (Debian's 6.1.176 on an AVX-512 + AMX host: 2696 bytes, everything but AMX; older builds:
 * 832). The host kernel accepts a SETREGSET only with its whole XSAVE size, AMX included
 * (11008 bytes there), so every UML process dies at its first context switch:
 * "userspace - ptrace set fp regs failed, errno = 14" and a kernel panic in init.
 *
 * How: a SETREGSET is padded to the host's size; AMX stays absent from the header, so the host
 * ignores the padding (AMX is never enabled in a UML process: its permission request goes to
 * the UML kernel, not the host). Should UML's buffer be shorter than all non-AMX state (832
 * bytes: no AVX-512), the state between is read with every GETREGSET and kept per UML buffer
 * (one per UML task), so each task's extended registers are restored like the others.
 *
 * Cost: UML restores the registers before every return to a process, nearly always unchanged
 * since it read them (a plain system call). The host copies and validates the whole buffer
 * on each SETREGSET, so one that would write what the stopped process already holds is
 * skipped: the last state read or written per process is remembered until it runs again.
 * Every other ptrace request passes through unchanged.
 */
#define _GNU_SOURCE
#include <cpuid.h>
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
#define FIRST_AMX_COMPONENT 17
#define LEGACY_AND_HEADER 576

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

struct tail {
	const void *key; /* UML's register buffer */
	struct tail *next;
	unsigned char bytes[];
};

struct last {
	pid_t pid;
	int valid;
	struct last *next;
	unsigned char bytes[];
};

static ptrace_fn real_ptrace;
static size_t host_size;      /* what SETREGSET demands: the whole XSAVE area */
static size_t read_size;      /* all user state but AMX */
static unsigned char *bounce; /* host_size bytes */
static struct tail *tails[BUCKETS];
static struct last *lasts[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static struct tail **tail_slot(const void *key)
{
	struct tail **p = &tails[((uintptr_t)key >> 4) % BUCKETS];
	while (*p && (*p)->key != key)
		p = &(*p)->next;
	return p;
}

static struct last *last_of(pid_t pid, int create)
{
	struct last **p = &lasts[(unsigned)pid % BUCKETS];
	while (*p && (*p)->pid != pid)
		p = &(*p)->next;
	if (!*p && create) {
		*p = calloc(1, sizeof(struct last) + host_size);
		if (*p)
			(*p)->pid = pid;
	}
	return *p;
}

/* The end of the last user state component below AMX that XCR0 enables (standard format). */
static size_t size_without_amx(void)
{
	unsigned int eax, ebx, ecx, edx, lo, hi;
	unsigned long long xcr0;
	size_t end = LEGACY_AND_HEADER;
	int i;

	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	xcr0 = ((unsigned long long)hi << 32) | lo;
	for (i = 2; i < FIRST_AMX_COMPONENT; i++) {
		if (!(xcr0 & (1ULL << i)) || !__get_cpuid_count(0xd, i, &eax, &ebx, &ecx, &edx))
			continue;
		if (eax && ebx + eax > end)
			end = ebx + eax;
	}
	return end;
}

/* The regset's size is what the kernel reports back for an oversized buffer. */
static void learn(pid_t pid)
{
	unsigned char *probe = malloc(PROBE_SIZE);
	struct iovec iov = { probe, PROBE_SIZE };

	if (probe && real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &iov) == 0) {
		bounce = calloc(1, iov.iov_len);
		if (bounce) {
			host_size = iov.iov_len;
			read_size = size_without_amx();
			if (read_size > host_size)
				read_size = host_size;
		}
	}
	free(probe);
}

static long xstate(enum __ptrace_request request, pid_t pid, struct iovec *iov)
{
	struct iovec whole;
	struct tail **t = NULL;
	struct last *seen;
	size_t known, span;
	long rc;

	if (!host_size)
		learn(pid);
	if (!host_size || iov->iov_len >= host_size)
		return real_ptrace(request, pid, (void *)NT_X86_XSTATE_NOTE, iov);
	known = iov->iov_len;
	span = known > read_size ? known : read_size; /* what is read, kept and compared */
	if (known < read_size)
		t = tail_slot(iov->iov_base);
	if (request == PTRACE_GETREGSET) {
		whole.iov_base = bounce;
		whole.iov_len = span;
		rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &whole);
		if (rc < 0)
			return rc;
		memcpy(iov->iov_base, bounce, known);
		if (t && !*t) {
			*t = calloc(1, sizeof(struct tail) + read_size);
			if (*t)
				(*t)->key = iov->iov_base;
		}
		if (t && *t)
			memcpy((*t)->bytes + known, bounce + known, read_size - known);
		seen = last_of(pid, 1);
		if (seen) {
			memcpy(seen->bytes, bounce, span);
			seen->valid = 1;
		}
		return 0;
	}
	memcpy(bounce, iov->iov_base, known);
	if (t) {
		/* A task never read here (new) gets the process's current extended state. */
		seen = last_of(pid, 0);
		if (*t) {
			memcpy(bounce + known, (*t)->bytes + known, read_size - known);
		} else if (seen && seen->valid) {
			memcpy(bounce + known, seen->bytes + known, read_size - known);
		} else {
			unsigned char *current = malloc(read_size);
			struct iovec now = { current, read_size };

			if (!current)
				return -1;
			rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &now);
			if (rc == 0)
				memcpy(bounce + known, current + known, read_size - known);
			free(current);
			if (rc < 0)
				return rc;
		}
	}
	seen = last_of(pid, 1);
	if (seen && seen->valid && memcmp(seen->bytes, bounce, span) == 0)
		return 0; /* the stopped process holds exactly this already */
	memset(bounce + span, 0, host_size - span); /* AMX: absent from the header */
	whole.iov_base = bounce;
	whole.iov_len = host_size;
	rc = real_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE_NOTE, &whole);
	if (seen) {
		seen->valid = rc == 0;
		if (rc == 0)
			memcpy(seen->bytes, bounce, span);
	}
	return rc;
}

/* Requests after which the process may have run (or its registers changed some other way). */
static int may_change_state(enum __ptrace_request request)
{
	switch ((int)request) {
	case PTRACE_PEEKTEXT:
	case PTRACE_PEEKDATA:
	case PTRACE_PEEKUSER:
	case PTRACE_POKETEXT:
	case PTRACE_POKEDATA:
	case PTRACE_GETREGS:
	case PTRACE_SETREGS:
	case PTRACE_GETFPREGS:
	case PTRACE_GETSIGINFO:
	case PTRACE_GETEVENTMSG:
		return 0; /* PTRACE_SETOPTIONS too: UML sets them on each new process (pids get reused) */
	default:
		return 1;
	}
}

long ptrace(enum __ptrace_request request, ...)
{
	va_list ap;
	pid_t pid;
	void *addr, *data;
	struct last *seen;
	long rc;

	va_start(ap, request);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);
	if (!real_ptrace)
		real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	pthread_mutex_lock(&lock);
	if ((request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) &&
	    (uintptr_t)addr == NT_X86_XSTATE_NOTE && data) {
		rc = xstate(request, pid, (struct iovec *)data);
		pthread_mutex_unlock(&lock);
		return rc;
	}
	if (host_size && may_change_state(request)) {
		seen = last_of(pid, 0);
		if (seen)
			seen->valid = 0;
	}
	pthread_mutex_unlock(&lock);
	return real_ptrace(request, pid, addr, data);
}
