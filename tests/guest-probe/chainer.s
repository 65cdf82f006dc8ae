# Chain guest: hashes its whole boot disk and writes runs of sectors, so a test can compare what
# the guest read with `qemu-img convert` of the chain, and see writes land (and survive a crash).
#
# Four sectors: the boot sector (LBA 0) loads LBA 1, its configuration, and LBAs 2-3, the rest of
# the program. The configuration (tests/src/guests.rs, ChainConfig):
#   0x00 "VBCHAIN1", 0x08 u32 flags (bit 0: hash before the writes, bit 1: hash after them),
#   0x0C u32 number of write runs (<= 16), 0x10 u32 tag,
#   0x20 runs of 16 bytes: u32 first LBA, u32 writes, u32 stride (sectors), u32 sectors per write
#   (1..=64).
# Without the magic it only hashes (flags = 1, no runs).
#
# A hash pass prints HASH-BEGIN, then for each 64-sector chunk (the last one may be shorter) its
# FNV-1a 32-bit hash in hex on a line, then HASH-END. Each write (AH=43h) prints "W <lba>", and
# the last one WRITES-DONE.
# Sector s of a write holds the dwords base + i * 0x01000193 (i = 0..127), where
# base = (s * 0x9E3779B1) xor tag. The end: CHAIN-PASS and exit code 0x10; an INT 13h error:
# "CHAIN-FAIL <AH> at <lba>" and exit code 0x11.
.code16
.global _start

.set total,     0x600
.set flags,     0x604
.set nruns,     0x608
.set tag,       0x60C
.set lba,       0x610
.set wleft,     0x614
.set wstride,   0x618
.set wsectors,  0x61C
.set run,       0x620
.set drive,     0x624
.set params,    0x630
.set CONFIG,    0x7E00
.set READ_SEG,  0x2000
.set WRITE_SEG, 0x3000

_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    cld
    mov %dl, drive
    # LBA 1 (configuration) and LBAs 2-3 (the rest of this program) to 0000:7E00.
    mov $dap, %si
    mov $0x42, %ah
    int $0x13
    jnc main
    mov $0x11, %al
    mov $0xf4, %dx
    out %al, %dx
    hlt

.balign 4
dap:
    .byte 0x10, 0
dap_count:
    .word 3
dap_off:
    .word CONFIG
dap_seg:
    .word 0
dap_lba:
    .long 1, 0

.org 510
.byte 0x55, 0xaa
.org 1024            # LBA 1: the configuration, written by the host

main:
    mov $msg_start, %si
    call puts
    movw $0x1A, params
    mov $params, %si
    mov $0x48, %ah
    mov drive, %dl
    int $0x13
    jc fail
    mov params+16, %eax
    mov %eax, total
    movl $1, flags
    movl $0, nruns
    mov $magic, %si
    mov $CONFIG, %di
    mov $8, %cx
    repe cmpsb
    jne 1f
    mov CONFIG+8, %eax
    mov %eax, flags
    mov CONFIG+12, %eax
    mov %eax, nruns
    mov CONFIG+16, %eax
    mov %eax, tag
1:  testb $1, flags
    jz 2f
    call hash_disk
2:  call do_writes
    testb $2, flags
    jz 3f
    call hash_disk
3:  mov $msg_pass, %si
    call puts
    mov $0x10, %al
    jmp exit

# ---- hash every sector, one line per 64-sector chunk
hash_disk:
    mov $msg_hbegin, %si
    call puts
    movl $0, lba
1:  mov total, %eax
    sub lba, %eax
    jz 4f
    mov $64, %ecx
    cmp %ecx, %eax
    jae 2f
    mov %eax, %ecx
2:  mov %cx, dap_count
    mov lba, %eax
    mov %eax, dap_lba
    movw $0, dap_off
    movw $READ_SEG, dap_seg
    mov $0x4200, %ax
    call disk_io
    push %es
    mov $READ_SEG, %ax
    mov %ax, %es
    movzwl dap_count, %ecx
    add %ecx, lba
    shl $9, %ecx
    xor %bx, %bx
    mov $0x811c9dc5, %eax
3:  movzbl %es:(%bx), %edx
    xor %edx, %eax
    imul $0x01000193, %eax, %eax
    inc %bx
    dec %ecx
    jnz 3b
    pop %es
    call print_hex32
    call newline
    jmp 1b
4:  mov $msg_hend, %si
    jmp puts

# ---- the write runs
do_writes:
    movl $0, run
1:  mov run, %ebx
    cmp nruns, %ebx
    jae 9f
    shl $4, %bx
    add $CONFIG+0x20, %bx
    mov (%bx), %eax
    mov %eax, lba
    mov 4(%bx), %eax
    mov %eax, wleft
    mov 8(%bx), %eax
    mov %eax, wstride
    mov 12(%bx), %eax
    mov %eax, wsectors
2:  cmpl $0, wleft
    je 8f
    # fill WRITE_SEG:0 with the sectors' contents
    push %es
    mov $WRITE_SEG, %ax
    mov %ax, %es
    xor %di, %di
    mov lba, %edx
    mov wsectors, %si
3:  mov %edx, %eax
    imul $0x9E3779B1, %eax, %eax
    xor tag, %eax
    mov $128, %cx
4:  stosl
    add $0x01000193, %eax
    loop 4b
    inc %edx
    dec %si
    jnz 3b
    pop %es
    mov lba, %eax
    mov %eax, dap_lba
    mov wsectors, %ax
    mov %ax, dap_count
    movw $0, dap_off
    movw $WRITE_SEG, dap_seg
    mov $0x4300, %ax
    call disk_io
    mov $msg_w, %si
    call puts
    mov lba, %eax
    call print_hex32
    call newline
    mov wstride, %eax
    add %eax, lba
    decl wleft
    jmp 2b
8:  incl run
    jmp 1b
9:  mov $msg_wdone, %si
    jmp puts

# AX = function; the DAP is set up. Fails the run on CF=1.
disk_io:
    mov $dap, %si
    mov drive, %dl
    int $0x13
    jc fail
    ret

fail:
    push %ax
    mov $msg_fail, %si
    call puts
    pop %ax
    shr $8, %ax
    movzwl %ax, %eax
    call print_hex32
    mov $msg_at, %si
    call puts
    mov dap_lba, %eax
    call print_hex32
    call newline
    mov $0x11, %al
exit:
    mov %al, %bl
    mov $0x3fd, %dx                     # let the last byte leave before QEMU exits
    mov $0xffff, %cx
6:  in %dx, %al
    test $0x40, %al
    loopz 6b
    mov %bl, %al
    mov $0xf4, %dx
    out %al, %dx
5:  hlt
    jmp 5b

newline:
    mov $msg_nl, %si
puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

# EAX in 8 hex digits
print_hex32:
    mov $8, %cx
1:  rol $4, %eax
    push %eax
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $7, %al
2:  call putc
    pop %eax
    loop 1b
    ret

putc:
    push %cx
    push %dx
    mov %al, %bl
    mov $0x3fd, %dx
    mov $0xffff, %cx
1:  in %dx, %al
    test $0x20, %al
    loopz 1b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    pop %dx
    pop %cx
    ret

magic:      .ascii "VBCHAIN1"
msg_start:  .asciz "CHAIN-START\r\n"
msg_hbegin: .asciz "HASH-BEGIN\r\n"
msg_hend:   .asciz "HASH-END\r\n"
msg_w:      .asciz "W "
msg_pass:   .asciz "CHAIN-PASS\r\n"
msg_wdone:  .asciz "WRITES-DONE\r\n"
msg_fail:   .asciz "CHAIN-FAIL "
msg_at:     .asciz " at "
msg_nl:     .asciz "\r\n"
.org 2048
