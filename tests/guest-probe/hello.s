# The smallest guest: print the line at `message` on COM1 and port E9h, then end QEMU through
# isa-debug-exit with the "pass" code. For menu and boot-path tests where what matters is which
# image was booted, not what it does with the disk. tests/src/guests.rs patches the message.
.code16
.global _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    cld
    mov $message, %si
1:  lodsb
    test %al, %al
    jz 2f
    mov %al, %bl
    call wait_uart
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0xe9, %dx
    out %al, %dx
    jmp 1b
2:  call wait_uart                      # let the last byte leave before QEMU exits
    mov $0x10, %al
    mov $0xf4, %dx
    out %al, %dx
3:  hlt
    jmp 3b

# Wait (bounded) until the UART's transmitter is empty, so no byte overwrites the previous one.
wait_uart:
    mov $0xffff, %cx
    mov $0x3fd, %dx
4:  in %dx, %al
    test $0x40, %al
    jnz 5f
    loop 4b
5:  ret
.org 0x100
message:
    .fill 0xFE, 1, 0
.org 510
    .byte 0x55, 0xaa
