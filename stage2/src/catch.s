# A recovery point for panics, for stage2 and the resident engine (which includes this file
# through catch.rs): `vboot_catch` calls a function and returns 0 when it returns;
# `vboot_throw`, called from deeper down (the panic handler), abandons every frame below
# `vboot_catch` and makes that call return 1. No unwinding: the abandoned frames' destructors
# never run. Only register-relative addressing, so the position-independent engine can use it.
#
# struct JumpBuf (catch.rs): ebx, esi, edi, ebp, esp, each a u32.

.section .text.vboot_catch, "ax"
.code32

# u32 vboot_catch(JumpBuf *buf, void (*f)(void *), void *arg)
.global vboot_catch
vboot_catch:
    mov 4(%esp), %eax
    mov %ebx, 0(%eax)
    mov %esi, 4(%eax)
    mov %edi, 8(%eax)
    mov %ebp, 12(%eax)
    mov %esp, 16(%eax)              # points at our return address
    mov 8(%esp), %ecx
    mov 12(%esp), %edx
    sub $8, %esp                    # keep the caller's 16-byte stack alignment for f
    push %edx
    call *%ecx
    add $12, %esp
    xor %eax, %eax
    ret

# void vboot_throw(const JumpBuf *buf) -> !
.global vboot_throw
vboot_throw:
    mov 4(%esp), %eax
    mov 0(%eax), %ebx
    mov 4(%eax), %esi
    mov 8(%eax), %edi
    mov 12(%eax), %ebp
    mov 16(%eax), %esp
    cld
    mov $1, %eax
    ret
