# Drive-numbering guest: which hard disks the guest sees, and which is which. Prints on COM1
#   DRIVES boot XX count-bda XX count-08h XX
#   DRIVE XX sectors XXXXXXXX signature XXXXXXXX      (one line per hard disk 80h, 81h ...)
#   DRIVES DONE
# where count-bda is 0040:0075, count-08h is DL of AH=08h on drive 80h, sectors the low 32 bits
# of AH=48h's sector count and signature the MBR disk signature (bytes 440-443 of sector 0, read
# with AH=42h). Then QEMU ends with the pass code; on a failed call it prints DRIVES FAIL XX
# (the drive) and ends with the fail code. The disk signature of the guest's own image is at
# 440 like any MBR's; tests/src/guests.rs (drives_guest) sets it.
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
    mov %dl, boot_drive
    mov $msg_boot, %si
    call puts
    mov boot_drive, %al
    call hex8
    mov $msg_bda, %si
    call puts
    mov 0x475, %al
    mov %al, count
    call hex8
    mov $msg_08h, %si
    call puts
    mov $0x08, %ah
    mov $0x80, %dl
    xor %di, %di
    int $0x13
    mov %dl, %al
    call hex8
    call crlf
    movb $0x80, drive
next:
    mov count, %al
    add $0x80, %al
    cmp %al, drive
    jae done
    movw $0x1A, params
    mov $params, %si
    mov $0x48, %ah
    mov drive, %dl
    int $0x13
    jc fail
    movw $1, dap_count
    mov $dap, %si
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    jc fail
    mov $msg_drive, %si
    call puts
    mov drive, %al
    call hex8
    mov $msg_sectors, %si
    call puts
    mov params+16, %eax
    call hex32
    mov $msg_signature, %si
    call puts
    mov 0x600 + 440, %eax
    call hex32
    call crlf
    incb drive
    jmp next
done:
    mov $msg_done, %si
    call puts
    mov $0x10, %al
    jmp exit
fail:
    mov $msg_fail, %si
    call puts
    mov drive, %al
    call hex8
    call crlf
    mov $0x11, %al
exit:
    mov $0xf4, %dx
    out %al, %dx
1:  hlt
    jmp 1b

# AL as two hex digits.
hex8:
    push %ax
    shr $4, %al
    call nibble
    pop %ax
nibble:
    and $0x0f, %al
    add $'0', %al
    cmp $'9', %al
    jbe putc
    add $7, %al
    jmp putc

# EAX as eight hex digits.
hex32:
    mov $4, %cx
2:  rol $8, %eax
    push %eax
    push %cx
    call hex8
    pop %cx
    pop %eax
    loop 2b
    ret

crlf:
    mov $'\r', %al
    call putc
    mov $'\n', %al
    jmp putc

puts:
    lodsb
    test %al, %al
    jz 4f
    call putc
    jmp puts

# AL on COM1, after waiting (bounded) for the transmitter; AX, CX, DX are not kept.
putc:
    push %cx
    mov %al, %ah
    mov $0x3fd, %dx
    mov $0xffff, %cx
3:  in %dx, %al
    test $0x20, %al
    loopz 3b
    mov %ah, %al
    mov $0x3f8, %dx
    out %al, %dx
    pop %cx
4:  ret

msg_boot: .asciz "DRIVES boot "
msg_bda: .asciz " count-bda "
msg_08h: .asciz " count-08h "
msg_drive: .asciz "DRIVE "
msg_sectors: .asciz " sectors "
msg_signature: .asciz " signature "
msg_done: .asciz "DRIVES DONE\r\n"
msg_fail: .asciz "DRIVES FAIL "
boot_drive: .byte 0
count: .byte 0
drive: .byte 0
    .balign 4
dap:
    .byte 0x10, 0
dap_count:
    .word 1
    .word 0x0600, 0
    .quad 0
params:
    .fill 0x1A, 1, 0
.org 440
signature:
    .long 0
.org 510
    .byte 0x55, 0xaa
