# A guest MBR that writes through INT 13h before the OS: it reports on COM1 whether sector
# MARK_LBA already holds its marker ("MBR-MARK-SEEN" or "MBR-MARK-NONE"), writes the marker
# there with AH=43h ("MBR-MARK-WRITTEN"), then starts the active partition's boot sector as a
# standard MBR does (DS:SI at its partition entry, DL the drive). The `immutable_attach` test
# boots Linux behind it and looks for the marker through vboot-attach. On an error it prints
# "MBR-FAIL" and exits QEMU with code 11h.
.code16
.global _start
.set RELOC,    0x0600
.set BUF,      0x7C00
.set MARK_LBA, 40

_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7C00, %sp
    cld
    mov $0x7C00, %si
    mov $RELOC, %di
    mov $256, %cx
    rep movsw
    ljmp $0, $RELOC + (moved - _start)
moved:
    sti
    mov %dl, RELOC + (drive - _start)
    # The sector as it is now.
    movl $MARK_LBA, RELOC + (dap_lba - _start)
    mov $0x42, %ah
    call disk
    mov $BUF, %si
    mov $RELOC + (marker - _start), %di
    mov $marker_end - marker, %cx
    repe cmpsb
    mov $RELOC + (msg_none - _start), %si
    jne 1f
    mov $RELOC + (msg_seen - _start), %si
1:  call puts
    # The marker, then zeros, written.
    mov $BUF, %di
    xor %al, %al
    mov $512, %cx
    rep stosb
    mov $RELOC + (marker - _start), %si
    mov $BUF, %di
    mov $marker_end - marker, %cx
    rep movsb
    mov $0x4300, %ax
    call disk
    mov $RELOC + (msg_written - _start), %si
    call puts
    # The active partition's boot sector.
    mov $RELOC + 0x1BE, %bx
    mov $4, %cx
2:  cmpb $0x80, (%bx)
    je 3f
    add $16, %bx
    loop 2b
    jmp fail
3:  mov 8(%bx), %eax
    mov %eax, RELOC + (dap_lba - _start)
    push %bx
    mov $0x42, %ah
    call disk
    pop %si
    cmpw $0xAA55, BUF + 510
    jne fail
    mov RELOC + (drive - _start), %dl
    ljmp $0, $BUF

# AH = 42h or 43h (AL = 0) on the boot drive with the packet below; a failure ends the guest.
disk:
    mov $RELOC + (dap - _start), %si
    mov RELOC + (drive - _start), %dl
    int $0x13
    jc fail
    ret

fail:
    mov $RELOC + (msg_fail - _start), %si
    call puts
    mov $0x11, %al
    mov $0xf4, %dx
    out %al, %dx
4:  hlt
    jmp 4b

# The NUL-terminated line at DS:SI on COM1, CR LF after it.
puts:
    lodsb
    test %al, %al
    jz 6f
    call putc
    jmp puts
6:  mov $13, %al
    call putc
    mov $10, %al
putc:
    mov %al, %bl
    mov $0x3fd, %dx
    xor %cx, %cx
5:  in %dx, %al
    test $0x20, %al
    loopz 5b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    ret

.balign 4
dap:
    .byte 0x10, 0
    .word 1
    .word BUF, 0
dap_lba:
    .long 0, 0
drive: .byte 0
marker: .ascii "VBOOT-MBR-MARK-1"
marker_end:
msg_seen:    .asciz "MBR-MARK-SEEN"
msg_none:    .asciz "MBR-MARK-NONE"
msg_written: .asciz "MBR-MARK-WRITTEN"
msg_fail:    .asciz "MBR-FAIL"
.org 440
