# Floppy check guest: the boot sector of a 1.44M floppy image whose other sectors hold the probe
# pattern (tests/src/guests.rs pattern_sector: each sector starts with its LBA). It checks what
# DOS-era floppy guests rely on, one lettered step each:
#   A  booted with DL = 00h
#   B  the equipment word announces a floppy drive
#   C  AH=08h: CF=0, BL=04h (1.44M), CX=4F12h, DH=01h, DL >= 1
#   D  AH=08h ES:DI is the INT 1Eh table, and its sectors-per-track byte is 18
#   E  AH=15h: CF=0, AH=02h (floppy with change line)
#   F  AH=16h: CF=0, AH=00h (not changed)
#   G  AH=41h: CF=1 (no EDD on floppies)
#   H  AH=02h, 20 sectors from C0 H1 S10 (across a track): CF=0, AL=20, each is LBA 27+i
#   I  AH=03h of one sector to C79 H1 S18 (the last, LBA 2879); the host checks the file
#   J  AH=02h reads it back
# Output on COM1: "FLOPPY PASS" (isa-debug-exit 10h, QEMU status 33) or "FLOPPY FAIL <step>"
# (11h, status 35).
.code16
.global _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    ljmp $0, $main
main:
    sti
    cld
    mov %dl, drive
    movb $'A', step
    test %dl, %dl
    jnz fail

    incb step                           # B
    testb $1, 0x410
    jz fail

    incb step                           # C
    mov $0x08, %ah
    mov drive, %dl
    xor %di, %di
    mov %di, %es
    int $0x13
    jc fail
    cmp $0x04, %bl
    jne fail
    cmp $0x4F12, %cx
    jne fail
    cmp $0x01, %dh
    jne fail
    cmp $1, %dl
    jb fail

    incb step                           # D
    cmp 0x78, %di
    jne fail
    mov %es, %ax
    cmp 0x7A, %ax
    jne fail
    cmpb $18, %es:4(%di)
    jne fail

    incb step                           # E
    mov $0x15, %ah
    mov drive, %dl
    int $0x13
    jc fail
    cmp $0x02, %ah
    jne fail

    incb step                           # F
    mov $0x16, %ah
    mov drive, %dl
    int $0x13
    jc fail
    test %ah, %ah
    jnz fail

    incb step                           # G
    mov $0x41, %ah
    mov $0x55AA, %bx
    mov drive, %dl
    int $0x13
    jnc fail

    incb step                           # H
    mov $0x1000, %ax
    mov %ax, %es
    xor %bx, %bx
    mov $0x0214, %ax
    mov $0x000A, %cx
    mov $0x01, %dh
    mov drive, %dl
    int $0x13
    jc fail
    cmp $20, %al
    jne fail
    mov $27, %eax
    xor %di, %di
1:  cmp %es:(%di), %eax
    jne fail
    inc %eax
    add $512, %di
    cmp $47, %eax
    jne 1b

    incb step                           # I
    mov $0x2000, %ax
    mov %ax, %es
    xor %di, %di
    mov $marker, %si
    mov $16, %cx
    rep movsb
    xor %bx, %bx
    mov $0x0301, %ax
    mov $0x4F12, %cx
    mov $0x01, %dh
    mov drive, %dl
    int $0x13
    jc fail

    incb step                           # J
    mov $0x3000, %ax
    mov %ax, %es
    xor %bx, %bx
    mov $0x0201, %ax
    mov $0x4F12, %cx
    mov $0x01, %dh
    mov drive, %dl
    int $0x13
    jc fail
    xor %di, %di
    mov $marker, %si
    mov $16, %cx
    repe cmpsb
    jne fail

    mov $pass_text, %si
    call print
    mov $0x10, %al
    jmp finish

fail:
    mov $fail_text, %si
    call print
    mov $0x11, %al
finish:
    mov $0xf4, %dx
    out %al, %dx
2:  hlt
    jmp 2b

# Print the zero-terminated string at DS:SI on COM1 and port E9h.
print:
    lodsb
    test %al, %al
    jz 4f
    mov %al, %bl
    mov $0xffff, %cx
    mov $0x3fd, %dx
3:  in %dx, %al
    test $0x20, %al
    jnz 5f
    loop 3b
5:  mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0xe9, %dx
    out %al, %dx
    jmp print
4:  mov $0xffff, %cx                   # let the last byte leave before QEMU exits
    mov $0x3fd, %dx
6:  in %dx, %al
    test $0x40, %al
    jnz 7f
    loop 6b
7:  ret

pass_text: .asciz "FLOPPY PASS\r\n"
fail_text: .ascii "FLOPPY FAIL "
step:      .byte 0
           .asciz "\r\n"
marker:    .ascii "VBFLOPPY-WRITTEN"
drive:     .byte 0
.org 510
    .byte 0x55, 0xaa
