# Big-disk I/O guest: reads and writes a few chosen places of a disk of any size (64-bit LBAs, so
# far past 2 TiB too), checks each answer itself, and optionally times a run of scattered writes.
#
# Six sectors: the boot sector (LBA 0) loads LBA 1, its configuration, and LBAs 2-5, the rest of
# the program, with AH=42h. The configuration (tests/src/guests.rs, BigIoConfig):
#   0x00 "VBBIGIO1", 0x08 u32 number of operations (<= 30), 0x0C u32 tag, 0x10 u32 flags
#   (bit 0: run the write benchmark after the operations), 0x14 u32 benchmark writes (200 to
#   8192), 0x18 u32 the first LBA of the benchmark's list (u32 LBAs, one per write), 0x1C 0,
#   0x20 operations of 16 bytes: u64 LBA, u16 sectors (1..=64), u8 kind, u8 fill byte, u32 0.
# Kinds: 1 = write the tagged pattern by AH=43h, read it back by AH=42h and compare;
#        2 = read by AH=42h and require every byte to be the fill byte;
#        3 = read by AH=42h and require the tagged pattern (written earlier).
# The tagged pattern of sector s: the dwords base + i * 0x01000193 (i = 0..127), where
# base = (low 32 bits of s) * 0x9E3779B1 xor tag (the chain guest's, chainer.s).
#
# Output: BIGIO-START; DISK <sectors as 16 hex digits> from AH=48h; one line per operation
# ("OK W|F|P <lba> +<sectors>", a write's line ending in " T=<TSC cycles its AH=43h call took,
# 16 hex digits>"); the benchmark's lines (below); BIGIO-PASS and exit code 0x10.
# A failure: "BIGIO-FAIL ..." (the INT 13h status and LBA, or the first differing dword) and
# exit code 0x11.
#
# Benchmark: the list is read (AH=42h) to 4000:0000, then each write puts one sector of the
# tagged pattern at the next LBA of the list, by AH=43h. Before it the TSC is calibrated against 18 BIOS ticks ("TSC18 <hex>"); it prints BENCH-START,
# BENCH-100 after the first hundred writes, BENCH-LAST100 before the last hundred, BENCH-END, then
# "BENCH first100 ticks=<hex> tsc=<hex>" and "BENCH last100 ticks=<hex> tsc=<hex>" (BIOS ticks
# at 0040:006C and TSC cycles spent on those hundred writes).
.code16
.global _start

.set drive,     0x600
.set op_ptr,    0x602
.set op_left,   0x604
.set cur_count, 0x606
.set cur_lba,   0x608       # 8 bytes
.set cur_fill,  0x610
.set seg,       0x612
.set bench_i,   0x618
.set bench_n,   0x61C
.set marks,     0x620       # 4 x (u32 ticks, u32 tsc lo, u32 tsc hi): 48 bytes
.set params,    0x660
.set write_tsc, 0x680       # 8 bytes
.set CONFIG,    0x7E00
.set READ_SEG,  0x2000
.set WRITE_SEG, 0x3000
.set LIST_SEG,  0x4000

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
    # LBA 1 (configuration) and LBAs 2-5 (the rest of this program) to 0000:7E00.
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
    .word 5
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
    jnc 1f
    movl $0, cur_lba
    movl $0, cur_lba+4
    jmp fail_io
1:  mov $msg_disk, %si
    call puts
    mov params+20, %eax
    call print_hex32
    mov params+16, %eax
    call print_hex32
    call newline
    mov $magic, %si
    mov $CONFIG, %di
    mov $8, %cx
    repe cmpsb
    je 2f
    mov $msg_nocfg, %si
    jmp fail_msg
2:  mov CONFIG+8, %ax
    mov %ax, op_left
    movw $CONFIG+0x20, op_ptr

ops_loop:
    cmpw $0, op_left
    je ops_done
    mov op_ptr, %bx
    mov (%bx), %eax
    mov %eax, cur_lba
    mov 4(%bx), %eax
    mov %eax, cur_lba+4
    mov 8(%bx), %ax
    mov %ax, cur_count
    mov 11(%bx), %al
    mov %al, cur_fill
    mov 10(%bx), %al
    cmp $1, %al
    je op_write
    cmp $2, %al
    je op_fill
    cmp $3, %al
    je op_pattern
    mov $msg_badop, %si
    jmp fail_msg
op_next:
    call print_lba_count
op_advance:
    addw $16, op_ptr
    decw op_left
    jmp ops_loop

op_write:
    call fill_write_buf
    movw $WRITE_SEG, seg
    rdtsc
    mov %eax, write_tsc
    mov %edx, write_tsc+4
    mov $0x4300, %ax
    call disk_io
    rdtsc
    sub write_tsc, %eax
    sbb write_tsc+4, %edx
    mov %eax, write_tsc
    mov %edx, write_tsc+4
    # A write leaves its buffer as it was (vboot may lend it for a moment: docs/int13.md).
    mov $WRITE_SEG, %ax
    call verify_pattern_at
    mov $0xEE, %al
    call clear_read_buf
    movw $READ_SEG, seg
    mov $0x4200, %ax
    call disk_io
    call verify_pattern
    # "OK W <lba> +<sectors> T=<TSC cycles of the AH=43h call, 16 hex digits>"
    mov $msg_okw, %si
    call puts
    call print_lba
    mov $msg_plus, %si
    call puts
    movzwl cur_count, %eax
    call print_hex32
    mov $msg_t, %si
    call puts
    mov write_tsc+4, %eax
    call print_hex32
    mov write_tsc, %eax
    call print_hex32
    call newline
    jmp op_advance

op_fill:
    mov cur_fill, %al
    not %al
    call clear_read_buf
    movw $READ_SEG, seg
    mov $0x4200, %ax
    call disk_io
    call verify_fill
    mov $msg_okf, %si
    call puts
    jmp op_next

op_pattern:
    mov $0xEE, %al
    call clear_read_buf
    movw $READ_SEG, seg
    mov $0x4200, %ax
    call disk_io
    call verify_pattern
    mov $msg_okp, %si
    call puts
    jmp op_next

ops_done:
    testb $1, CONFIG+0x10
    jz pass
    call bench
pass:
    mov $msg_pass, %si
    call puts
    mov $0x10, %al
    jmp exit

# ---- the benchmark
bench:
    # TSC cycles over 18 BIOS ticks (about a second), measured while nothing else runs.
    call wait_tick
    rdtsc
    push %edx
    push %eax
    mov $18, %cx
1:  push %cx
    call wait_tick
    pop %cx
    loop 1b
    rdtsc
    pop %ebx
    sub %ebx, %eax
    pop %ebx
    sbb %ebx, %edx
    push %eax
    mov $msg_tsc18, %si
    call puts
    mov %edx, %eax
    call print_hex32
    pop %eax
    call print_hex32
    call newline

    mov CONFIG+0x18, %eax
    mov %eax, cur_lba
    movl $0, cur_lba+4
    mov CONFIG+0x14, %eax
    mov %eax, bench_n
    add $127, %eax
    shr $7, %eax
    mov %ax, cur_count
    movw $LIST_SEG, seg
    mov $0x4200, %ax
    call disk_io
    movl $0, bench_i
    movw $1, cur_count
    movw $WRITE_SEG, seg
    mov $msg_bstart, %si
    call puts
    mov $marks, %di
    call take_mark
2:  mov bench_i, %eax
    cmp $100, %eax
    jne 3f
    mov $marks+12, %di
    call take_mark
    mov $msg_b100, %si
    call puts
    mov bench_i, %eax
3:  mov bench_n, %ebx
    sub $100, %ebx
    cmp %ebx, %eax
    jne 4f
    mov $msg_blast, %si
    call puts
    mov $marks+24, %di
    call take_mark
    mov bench_i, %eax
4:  cmp bench_n, %eax
    jae 5f
    push %es
    mov $LIST_SEG, %bx
    mov %bx, %es
    mov bench_i, %ebx
    shl $2, %bx
    mov %es:(%bx), %eax
    pop %es
    mov %eax, cur_lba
    call fill_write_buf
    mov $0x4300, %ax
    call disk_io
    incl bench_i
    jmp 2b
5:  mov $marks+36, %di
    call take_mark
    mov $msg_bend, %si
    call puts
    mov $msg_bfirst, %si
    mov $marks, %bx
    call print_span
    mov $msg_blast2, %si
    mov $marks+24, %bx
    call print_span
    ret

# DS:SI = label; BX = the first of two marks: prints label, ticks and TSC between them.
print_span:
    call puts
    mov 12(%bx), %eax
    sub (%bx), %eax
    call print_hex32
    mov $msg_tsc, %si
    call puts
    mov 16(%bx), %eax
    mov 20(%bx), %edx
    sub 4(%bx), %eax
    sbb 8(%bx), %edx
    push %eax
    mov %edx, %eax
    call print_hex32
    pop %eax
    call print_hex32
    jmp newline

# DI = where: u32 ticks, u64 TSC.
take_mark:
    mov 0x46C, %eax
    mov %eax, (%di)
    rdtsc
    mov %eax, 4(%di)
    mov %edx, 8(%di)
    ret

# Wait until the BIOS tick count changes.
wait_tick:
    mov 0x46C, %eax
1:  sti
    hlt
    cmp 0x46C, %eax
    je 1b
    ret

# ---- buffers
# WRITE_SEG:0 <- the tagged pattern of cur_count sectors from cur_lba.
fill_write_buf:
    push %es
    mov $WRITE_SEG, %ax
    mov %ax, %es
    xor %di, %di
    mov cur_lba, %edx
    mov cur_count, %si
1:  mov %edx, %eax
    imul $0x9E3779B1, %eax, %eax
    xor CONFIG+0x0C, %eax
    mov $128, %cx
2:  stosl
    add $0x01000193, %eax
    loop 2b
    inc %edx
    dec %si
    jnz 1b
    pop %es
    ret

# READ_SEG:0 <- AL in every byte of cur_count sectors.
clear_read_buf:
    push %es
    mov $READ_SEG, %bx
    mov %bx, %es
    xor %di, %di
    mov cur_count, %cx
    shl $9, %cx
    rep stosb
    pop %es
    ret

# READ_SEG:0 must hold the tagged pattern of cur_count sectors from cur_lba.
verify_pattern:
    mov $READ_SEG, %ax
# The same at AX:0.
verify_pattern_at:
    push %es
    mov %ax, %es
    xor %bx, %bx
    mov cur_lba, %edx
    mov cur_count, %si
1:  mov %edx, %eax
    imul $0x9E3779B1, %eax, %eax
    xor CONFIG+0x0C, %eax
    mov $128, %cx
2:  cmp %es:(%bx), %eax
    jne 3f
    add $4, %bx
    add $0x01000193, %eax
    loop 2b
    inc %edx
    dec %si
    jnz 1b
    pop %es
    ret
3:  mov %es:(%bx), %ecx
    pop %es
    jmp fail_data

# READ_SEG:0 must hold cur_fill in every byte of cur_count sectors.
verify_fill:
    push %es
    mov $READ_SEG, %ax
    mov %ax, %es
    xor %bx, %bx
    mov cur_count, %cx
    shl $9, %cx
    mov cur_fill, %al
1:  cmp %es:(%bx), %al
    jne 2f
    inc %bx
    loop 1b
    pop %es
    ret
2:  movzbl %es:(%bx), %ecx
    movzbl %al, %eax
    pop %es
    # the sector: cur_lba + BX / 512
    movzwl %bx, %edx
    shr $9, %edx
    add cur_lba, %edx
    jmp fail_data

# AX = function; cur_lba, cur_count, seg set. Fails the run on CF=1.
disk_io:
    push %ax
    mov cur_lba, %eax
    mov %eax, dap_lba
    mov cur_lba+4, %eax
    mov %eax, dap_lba+4
    mov cur_count, %ax
    mov %ax, dap_count
    movw $0, dap_off
    mov seg, %ax
    mov %ax, dap_seg
    pop %ax
    mov $dap, %si
    mov drive, %dl
    int $0x13
    jc fail_io
    ret

# ---- failures
fail_io:
    push %ax
    mov $msg_failio, %si
    call puts
    pop %ax
    shr $8, %ax
    movzwl %ax, %eax
    call print_hex32
    mov $msg_at, %si
    call puts
    call print_lba
    call newline
    mov $0x11, %al
    jmp exit

# EDX = sector (low 32 bits), BX = byte offset in the buffer, EAX = wanted, ECX = found.
fail_data:
    push %ecx
    push %eax
    push %bx
    push %edx
    mov $msg_faild, %si
    call puts
    pop %eax
    call print_hex32
    mov $msg_off, %si
    call puts
    pop %ax
    and $0x1FF, %ax
    movzwl %ax, %eax
    call print_hex32
    mov $msg_want, %si
    call puts
    pop %eax
    call print_hex32
    mov $msg_got, %si
    call puts
    pop %eax
    call print_hex32
    call newline
    mov $0x11, %al
    jmp exit

fail_msg:
    push %si
    mov $msg_failc, %si
    call puts
    pop %si
    call puts
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

# ---- output
print_lba_count:
    call print_lba
    mov $msg_plus, %si
    call puts
    movzwl cur_count, %eax
    call print_hex32
    jmp newline

print_lba:
    mov cur_lba+4, %eax
    call print_hex32
    mov cur_lba, %eax
    jmp print_hex32

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
    push %bx
    mov %al, %bl
    mov $0x3fd, %dx
    mov $0xffff, %cx
1:  in %dx, %al
    test $0x20, %al
    loopz 1b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    pop %bx
    pop %dx
    pop %cx
    ret

magic:      .ascii "VBBIGIO1"
msg_start:  .asciz "BIGIO-START\r\n"
msg_disk:   .asciz "DISK "
msg_okw:    .asciz "OK W "
msg_t:      .asciz " T="
msg_okf:    .asciz "OK F "
msg_okp:    .asciz "OK P "
msg_plus:   .asciz " +"
msg_pass:   .asciz "BIGIO-PASS\r\n"
msg_failio: .asciz "BIGIO-FAIL INT 13h status "
msg_at:     .asciz " at LBA "
msg_faild:  .asciz "BIGIO-FAIL data in sector "
msg_off:    .asciz " byte "
msg_want:   .asciz " want "
msg_got:    .asciz " got "
msg_failc:  .asciz "BIGIO-FAIL "
msg_nocfg:  .asciz "LBA 1 holds no configuration (VBBIGIO1)"
msg_badop:  .asciz "unknown operation kind"
msg_tsc18:  .asciz "TSC18 "
msg_bstart: .asciz "BENCH-START\r\n"
msg_b100:   .asciz "BENCH-100\r\n"
msg_blast:  .asciz "BENCH-LAST100\r\n"
msg_bend:   .asciz "BENCH-END\r\n"
msg_bfirst: .asciz "BENCH first100 ticks="
msg_blast2: .asciz "BENCH last100 ticks="
msg_tsc:    .asciz " tsc="
msg_nl:     .asciz "\r\n"
.org 3072
