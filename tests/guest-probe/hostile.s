# Hostile-register guest (issue 14; tests/tests/cdrom_floppy.rs): booted as a no-emulation CD
# boot image, it makes, on its own drive (DL from the loader: E0h), the INT 13h calls that used to
# stop or corrupt the resident engine. Each must fail with its status and CF=1, and a plain read
# afterwards must still work:
#   1  AH=42h at LBA 2^62 (blocks * 4 overflowed the engine's sector number)     -> 04h
#   2  AH=42h into a flat buffer 32 KiB below 2^64 (the buffer's end wrapped)    -> 09h
#   3  AH=42h into the KiB below the stub and the stub's first KiB (the BIOS
#      would DMA the CD block over the stub's code)                              -> 09h
#   4  AH=42h of block 16 (the volume descriptor, "CD001" at byte 1)             -> OK
# Lines on COM1: HOSTILE start, CALL n: CF=1 AH=xx, READ: OK, then HOSTILE DONE (QEMU ends
# through isa-debug-exit with the pass code) or HOSTILE FAIL: <why> AH=xx (the fail code).
.code16
.global _start
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
    mov $msg_start, %si
    call puts

    movb $'1', callno
    movb $0x04, want
    mov $dap_far, %si
    call hostile

    movb $'2', callno
    movb $0x09, want
    mov $dap_flat, %si
    call hostile

    movb $'3', callno
    movb $0x09, want
    mov 0x413, %ax                      # conventional memory in KiB: the stub starts there
    shl $6, %ax                         # KiB -> paragraphs
    sub $0x40, %ax                      # 1 KiB below it: a 2 KiB block covers the stub's first KiB
    mov %ax, dap_stub + 6
    mov $dap_stub, %si
    call hostile

    # 4: the engine still serves the drive.
    push %ds
    mov $0x1000, %ax
    mov %ax, %ds
    movl $0, 0
    movl $0, 4
    pop %ds
    mov $dap_pvd, %si
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    mov %ah, status
    mov $msg_read_failed, %si
    jc fail
    push %ds
    mov $0x1000, %ax
    mov %ax, %ds
    cmpl $0x30304443, 1                 # "CD00"
    jne 1f
    cmpb $'1', 5
1:  pop %ds
    mov $msg_wrong_data, %si
    jne fail
    mov $msg_read_ok, %si
    call puts
    mov $msg_done, %si
    call puts
    mov $0x10, %al
    jmp exit

# AH=42h with the packet at SI; it must come back with CF=1 and AH=`want`.
hostile:
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    mov %ah, status
    mov $msg_no_cf, %si
    jnc fail
    mov want, %al
    mov $msg_bad_ah, %si
    cmp status, %al
    jne fail
    mov $msg_call, %si
    call puts
    mov callno, %al
    call putc
    mov $msg_cf, %si
    call puts
    mov status, %al
    call put_hex8
    mov $msg_crlf, %si
    jmp puts

fail:
    push %si
    mov $msg_fail, %si
    call puts
    mov callno, %al
    call putc
    mov $msg_space, %si
    call puts
    pop %si
    call puts
    mov $msg_ah, %si
    call puts
    mov status, %al
    call put_hex8
    mov $msg_crlf, %si
    call puts
    mov $0x11, %al
exit:
    mov $0xf4, %dx
    out %al, %dx
2:  hlt
    jmp 2b

put_hex8:
    push %ax
    shr $4, %al
    call put_nibble
    pop %ax
put_nibble:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe putc
    add $7, %al
putc:
    mov %al, %bl
    mov $0x3fd, %dx
    mov $0xffff, %cx
3:  in %dx, %al
    test $0x20, %al
    loopz 3b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    ret

puts:
    lodsb
    test %al, %al
    jz 4f
    call putc
    jmp puts
4:  ret

msg_start:       .asciz "HOSTILE start\r\n"
msg_call:        .asciz "CALL "
msg_cf:          .asciz ": CF=1 AH="
msg_crlf:        .asciz "\r\n"
msg_space:       .asciz " "
msg_read_ok:     .asciz "READ: OK\r\n"
msg_done:        .asciz "HOSTILE DONE\r\n"
msg_no_cf:       .asciz "CF=0"
msg_bad_ah:      .asciz "wrong status"
msg_read_failed: .asciz "read failed"
msg_wrong_data:  .asciz "read wrong data"
msg_fail:        .asciz "HOSTILE FAIL: call "
msg_ah:          .asciz " AH="
.balign 4
dap_far:                                # 1 block at LBA 2^62 into 1000:0000
    .byte 0x10, 0
    .word 1
    .word 0, 0x1000
    .long 0, 0x40000000
dap_flat:                               # 16 blocks into the flat buffer 2^64 - 32 KiB
    .byte 0x18, 0
    .word 16
    .word 0xffff, 0xffff
    .long 0, 0
    .long 0xffff8000, 0xffffffff
dap_stub:                               # 1 block at LBA 0 into (stub - 1 KiB):0000
    .byte 0x10, 0
    .word 1
    .word 0, 0
    .long 0, 0
dap_pvd:                                # 1 block at LBA 16 into 1000:0000
    .byte 0x10, 0
    .word 1
    .word 0, 0x1000
    .long 16, 0
drive:  .byte 0
status: .byte 0
want:   .byte 0
callno: .byte '0'
# The catalog loads 4 sectors; guests.rs pads the code to 2 KiB.
