# The smallest guest: print the line at `message` on COM1 and port E9h, then end QEMU through
# isa-debug-exit with the "pass" code. For menu and boot-path tests where what matters is which
# image was booted, not what it does with the disk. tests/src/guests.rs patches the message,
# and `read_key`: when it is not zero, the guest waits for a byte on COM1 after the message and
# prints "GUEST-KEY <byte>" before it ends QEMU (which key reached the guest, not vboot).
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
    call print
    cmpb $0, read_key
    je 2f
1:  mov $0x3fd, %dx                     # wait for a byte on COM1
    in %dx, %al
    test $0x01, %al
    jz 1b
    mov $0x3f8, %dx
    in %dx, %al
    mov %al, key
    mov $key_line, %si
    call print
2:  call wait_uart                      # let the last byte leave before QEMU exits
    mov $0x10, %al
    mov $0xf4, %dx
    out %al, %dx
3:  hlt
    jmp 3b

# Print the zero-terminated string at DS:SI on COM1 and port E9h.
print:
    lodsb
    test %al, %al
    jz 5f
    mov %al, %bl
    call wait_uart
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0xe9, %dx
    out %al, %dx
    jmp print

# Wait (bounded) until the UART's transmitter is empty, so no byte overwrites the previous one.
wait_uart:
    mov $0xffff, %cx
    mov $0x3fd, %dx
4:  in %dx, %al
    test $0x40, %al
    jnz 5f
    loop 4b
5:  ret

key_line:
    .ascii "GUEST-KEY "
key:
    .asciz "?\r\n"
# Below the message, so that both stay in the 440 bytes of boot code of an MBR (the
# recover_mbr test boots this sector's code from a disk with a partition table).
.org 0xFF
read_key:
    .byte 0
message:
    .fill 0xFE, 1, 0
.org 510
    .byte 0x55, 0xaa
