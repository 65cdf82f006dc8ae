# Benchmark guest: print READ-START, read the whole boot disk with INT 13h AH=42h (127 sectors
# per call into 1000:0000), print READ-END and the TSC ticks the reads took ("TSC=" and 16 hex
# digits; under QEMU's -icount, executed instructions: a figure load does not change), or exit
# with 11h on an error; then, if vboot's stub sits at the top of conventional memory, its
# counters (docs/benchmarks.md, "Where a guest call's time goes"): "STUB engine=N fast=N bios=N
# copied=N" in hex; end QEMU with the pass code. The header offsets
# S_* come from vboot::stub through `as --defsym` (tests/src/guests.rs).
.code16
# Scratch variables, in the sector after the boot sector (the 510 bytes are full).
.set drive, 0x7e00
.set lba, 0x7e04
.set remaining, 0x7e08
.set tsc_start, 0x7e0c
.set params, 0x7e14
.global _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    cld
    mov %dl, drive
    mov $msg_start, %si
    call puts
    # Sector count from AH=48h.
    movw $0x1A, params
    mov $params, %si
    mov $0x48, %ah
    mov drive, %dl
    int $0x13
    jc fail
    mov params+16, %eax
    mov %eax, remaining
    movl $0, lba
    rdtsc
    mov %eax, tsc_start
    mov %edx, tsc_start+4
1:  mov remaining, %eax
    test %eax, %eax
    jz done
    mov $127, %ecx
    cmp %ecx, %eax
    jae 2f
    mov %eax, %ecx
2:  mov %cx, dap_count
    mov lba, %eax
    mov %eax, dap_lba
    mov $dap, %si
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    jc fail
    movzwl dap_count, %eax
    add %eax, lba
    sub %eax, remaining
    jmp 1b
done:
    rdtsc
    sub tsc_start, %eax
    sbb tsc_start+4, %edx
    push %eax
    push %edx
    mov $msg_end, %si
    call puts
    # The TSC ticks the reads took: "TSC=" and 16 hex digits.
    mov $msg_tsc, %si
    call puts
    pop %eax
    call hex32
    pop %eax
    call hex32
    mov $msg_crlf, %si
    call puts
    mov 0x413, %ax                          # conventional memory in KiB: the stub starts there
    shl $6, %ax
    mov %ax, %es
    cmpl $0x54534256, %es:0                 # "VBSTUB01"
    jne 7f
    cmpl $0x31304255, %es:4
    jne 7f
    mov $msg_engine, %si
    mov $S_CALLS, %bx
    call counter
    mov $msg_fast, %si
    mov $S_FAST_CALLS, %bx
    call counter
    mov $msg_bios, %si
    mov $S_ENGINE_BIOS_CALLS, %bx
    call counter
    mov $msg_copied, %si
    mov $S_BOUNCE_COPIED_BYTES, %bx
    call counter
    mov $msg_crlf, %si
    call puts
    # The last two sectors again, into the 512 bytes below the stub and the stub's first 512:
    # vboot must refuse (09h), on the fast path too, and the stub survive.
    mov %es, %ax
    sub $0x20, %ax
    mov %ax, dap+6
    subl $2, dap_lba
    movw $2, dap_count
    mov $dap, %si
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    mov $msg_guard, %si
    call puts
    mov %ah, %al
    shr $4, %al
    call hexdigit
    mov %ah, %al
    call hexdigit
    mov $msg_crlf, %si
    call puts
7:  mov $0x10, %al
    jmp exit
fail:                                       # no message: the exit code says it
    mov $0x11, %al
exit:
    mov $0xf4, %dx
    out %al, %dx
3:  hlt
    jmp 3b

# The label at SI, then the stub's u32 at ES:BX in hex.
counter:
    push %bx
    call puts
    pop %bx
    mov %es:(%bx), %eax
    jmp hex32

# EAX as 8 hex digits.
hex32:
    mov $8, %bp
8:  rol $4, %eax
    push %eax
    call hexdigit
    pop %eax
    dec %bp
    jnz 8b
    ret

# The low four bits of AL as a hex digit; AH is kept.
hexdigit:
    push %ax
    and $0xf, %al
    add $0x30, %al
    cmp $0x39, %al
    jbe 9f
    add $7, %al
9:  call putc
    pop %ax
    ret

puts:
    lodsb
    test %al, %al
    jz 5f
    call putc
    jmp puts
putc:
    mov %al, %bl
    mov $0x3fd, %dx
    xor %cx, %cx                            # 65536 polls at most
4:  in %dx, %al
    test $0x20, %al
    loopz 4b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    ret
5:  mov $0x3fd, %dx
    xor %cx, %cx                            # 65536 polls at most
6:  in %dx, %al
    test $0x40, %al
    loopz 6b
    ret

msg_start: .asciz "READ-START\r\n"
msg_end:   .asciz "READ-END\r\n"
msg_engine: .asciz "STUB engine="
msg_fast:  .asciz " fast="
msg_bios:  .asciz " bios="
msg_copied: .asciz " copied="
msg_crlf:  .asciz "\r\n"
msg_tsc:   .asciz "TSC="
msg_guard: .asciz "STUB-GUARD "
.balign 4
dap:
    .byte 0x10, 0
dap_count:
    .word 0
    .word 0, 0x1000
dap_lba:
    .long 0, 0
.org 510
.byte 0x55, 0xaa
