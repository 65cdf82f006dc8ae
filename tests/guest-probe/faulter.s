# Fault guest, for the fault-injection firmware (tests/tests/faults.rs): makes the INT 13h call
# at `fault_ah` on its boot drive, which that engine fails on purpose, and checks that the call
# came back with CF=1 and AH=20h (controller failure) and that the next call (AH=42h, LBA 1, whose
# first 8 bytes are "VBFAULT1") works; `rounds` times. Lines on COM1:
#   FAULTER start
#   FAULT-CALL n: CF=1 AH=20        NEXT-CALL n: OK        (per round)
#   FAULTER DONE, or FAULTER FAIL: <why> [AH=xx]
# After DONE it waits for a byte on COM1 (the test reads the screen meanwhile), then ends QEMU
# through isa-debug-exit with the pass code; after FAIL, with the fail code at once.
# tests/src/guests.rs patches `fault_ah` and `rounds`.
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
    movb $1, round
1:  mov fault_ah, %ah
    mov drive, %dl
    int $0x13
    mov %ah, status
    mov $msg_no_cf, %si
    jnc fail
    mov $msg_bad_ah, %si
    cmpb $0x20, status
    jne fail
    mov $msg_fault_call, %si
    call puts
    call put_round
    mov $msg_fault_ok, %si
    call puts
    # The next call: one sector from LBA 1 into 1000:0000.
    movw $1, dap_count
    push %ds                            # clear the buffer: stale data must not pass
    mov $0x1000, %ax
    mov %ax, %ds
    movl $0, 0
    movl $0, 4
    pop %ds
    mov $dap, %si
    mov $0x42, %ah
    mov drive, %dl
    int $0x13
    mov %ah, status
    mov $msg_read_failed, %si
    jc fail
    push %ds
    mov $0x1000, %ax
    mov %ax, %ds
    cmpl $0x41464256, 0                 # "VBFA"
    jne 2f
    cmpl $0x31544c55, 4                 # "ULT1"
2:  pop %ds
    mov $msg_wrong_data, %si
    jne fail
    mov $msg_next_call, %si
    call puts
    call put_round
    mov $msg_next_ok, %si
    call puts
    incb round
    mov round, %al
    cmp rounds, %al
    jbe 1b
    mov $msg_done, %si
    call puts
    # Wait for a byte on COM1.
3:  mov $0x3fd, %dx
    in %dx, %al
    test $1, %al
    jz 3b
    mov $0x10, %al
    jmp exit

fail:
    push %si
    mov $msg_fail, %si
    call puts
    pop %si
    call puts
    mov $msg_ah, %si
    call puts
    mov status, %al
    call put_hex8
    mov $msg_next_ok + 4, %si          # "\r\n"
    call puts
    mov $0x11, %al
exit:
    mov $0xf4, %dx
    out %al, %dx
4:  hlt
    jmp 4b

put_round:
    mov round, %al
    add $'0', %al
    jmp putc

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
5:  in %dx, %al
    test $0x20, %al
    loopz 5b
    mov %bl, %al
    mov $0x3f8, %dx
    out %al, %dx
    ret

puts:
    lodsb
    test %al, %al
    jz 6f
    call putc
    jmp puts
6:  ret

msg_start:       .asciz "FAULTER start\r\n"
msg_fault_call:  .asciz "FAULT-CALL "
msg_fault_ok:    .asciz ": CF=1 AH=20\r\n"
msg_next_call:   .asciz "NEXT-CALL "
msg_next_ok:     .asciz ": OK\r\n"
msg_done:        .asciz "FAULTER DONE\r\n"
msg_no_cf:       .asciz "fault call CF=0"
msg_bad_ah:      .asciz "fault call"
msg_read_failed: .asciz "next call"
msg_wrong_data:  .asciz "next call data"
msg_fail:        .asciz "FAULTER FAIL: "
msg_ah:          .asciz " AH="
.balign 4
dap:
    .byte 0x10, 0
dap_count:
    .word 1
    .word 0, 0x1000
    .long 1, 0
drive:  .byte 0
status: .byte 0
round:  .byte 0
.org 0x1F0
fault_ah: .byte 0xF0
rounds:   .byte 2
.org 510
    .byte 0x55, 0xaa
