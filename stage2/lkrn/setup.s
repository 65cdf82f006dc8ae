# vboot.lkrn's real-mode setup code (docs/boot-layout.md, "vboot.lkrn"). A Linux boot loader
# (GRUB linux16, SYSLINUX LINUX, iPXE chain) loads this file's first setup_sects + 1 sectors at
# some segment X (this code, then stage2's low part), the rest (stage2's high part, then
# engine.bin) at 0x100000, and jumps to X+0x20:0000 in real mode. The code here puts things where
# stage2's low part expects them when stage1 has run, and enters it:
#   - the command line (cmd_line_ptr) to 0000:7E00, at most 511 bytes and a NUL;
#   - the low part to 0000:8000, with the bytes waiting at 0x100000 written into its header
#     (offset 36, 0 when stage1 loads it), which tells it not to read a disk (entry.s).
# cargo xtask build assembles it (origin 0: labels are offsets in the file, addressed with
# DS = X) and fills in the setup header (src/lkrn.rs SetupHeader).
.code16
.text
.globl _start
_start:
# Sector 0 is a boot sector only for the protocol's sake; a BIOS that boots the file by mistake
# gets a line saying what it is.
    ljmp $0x07C0, $1f
1:  push %cs
    pop %ds
    movb $0, serial_too             # a BIOS that mirrors its screen to COM1 says it once
    mov $not_a_boot_sector, %si
    call print
2:  hlt
    jmp 2b

# A NUL-terminated string at DS:SI to the screen (INT 10h teletype) and, unless serial_too is
# 0, to COM1 if it has one (the loader set it up when it uses the serial line; a missing UART
# reads as 0xFF).
print:
    cld
1:  lodsb
    test %al, %al
    jz 3f
    push %si
    mov $0x0E, %ah
    mov $0x0007, %bx
    push %ax
    int $0x10
    pop %ax
    cmpb $0, serial_too
    je 4f
    mov %al, %ah
    mov $0x3FD, %dx
    mov $0, %cx
2:  in %dx, %al
    cmp $0xFF, %al
    je 4f
    test $0x20, %al
    loopz 2b
    mov $0x3F8, %dx
    mov %ah, %al
    out %al, %dx
4:  pop %si
    jmp 1b
3:  ret

serial_too:
    .byte 1
not_a_boot_sector:
    .asciz "\r\nvboot.lkrn is started by a boot loader (GRUB linux16, SYSLINUX LINUX, iPXE chain), not by the BIOS.\r\n"

    .org 0x1F1
# The setup header (0x1F1..0x23C) is filled in by cargo xtask build; only the jump at 0x200,
# where the loader enters, is code.
    .org 0x200
    .byte 0xEB, setup_start - 0x202
    .org 0x240

.set HDR_SYSSIZE, 0x1F4
.set HDR_CMD_LINE_PTR, 0x228
.set CMDLINE_ADDR, 0x7E00           # src/lkrn.rs COMMAND_LINE_ADDR
.set CMDLINE_MAX, 511               # src/lkrn.rs COMMAND_LINE_MAX
.set LOW_ADDR, 0x8000               # stage2's low part, where stage1 would load it
.set ST2_SECTORS, 12                # Stage2Header (src/install.rs): sectors in all,
.set ST2_LOW_SECTORS, 32            #   the low part's,
.set ST2_PRELOADED, 36              #   and the bytes at 0x100000 (src/lkrn.rs)

setup_start:
    cli
    cld
    # DS = X from CS = X+0x20 (the protocol also sets DS, but the jump is what fixes X).
    mov %cs, %ax
    sub $0x20, %ax
    mov %ax, %ds
    sti
    # stage2's low part must follow this code.
    mov $bad_file, %si
    cmpl $0x4F4F4256, low_part+4        # "VBOO"
    jne fail
    cmpl $0x32545354, low_part+8        # "TST2"
    jne fail
    # The protected-mode part must hold at least stage2's high part.
    mov low_part+ST2_SECTORS, %eax
    sub low_part+ST2_LOW_SECTORS, %eax
    shl $9, %eax
    mov HDR_SYSSIZE, %ebx
    shl $4, %ebx
    cmp %eax, %ebx
    jb fail
    # The low part's new home, 0x8000.., must not overlap this code, which is still running.
    mov $overlap, %si
    xor %eax, %eax
    mov %ds, %ax
    shl $4, %eax                        # EAX = X * 16
    movzwl low_part+ST2_LOW_SECTORS, %ecx
    shl $9, %ecx
    add $LOW_ADDR, %ecx                 # ECX = end of the low part at 0x8000
    cmp %ecx, %eax
    jae 1f                              # the file starts above it
    movzbl 0x1F1, %edx                  # setup_sects
    inc %edx
    shl $9, %edx
    add %eax, %edx                      # EDX = end of the real-mode part as loaded
    cmp $CMDLINE_ADDR, %edx
    ja fail                             # it reaches into 0x7E00..
1:
    # The command line (linear address from the loader, below 0xA0000 as the protocol has it;
    # anywhere else, or none, is an empty one) to 0000:7E00.
    xor %ax, %ax
    mov %ax, %es
    mov $CMDLINE_ADDR, %di
    mov HDR_CMD_LINE_PTR, %esi
    test %esi, %esi
    jz 3f
    cmp $0xA0000, %esi
    jae 3f
    push %ds
    mov %esi, %eax
    shr $4, %eax
    mov %ax, %ds
    and $0xF, %si
    mov $CMDLINE_MAX, %cx
2:  lodsb
    test %al, %al
    jz 4f
    stosb
    loop 2b
4:  pop %ds
3:  movb $0, %es:(%di)
    # The low part to 0000:8000.
    mov $low_part, %si
    mov $LOW_ADDR, %di
    movzwl low_part+ST2_LOW_SECTORS, %ecx
    shl $7, %ecx                        # dwords
    rep movsl
    # What waits at 0x100000: the syssize bytes the loader put there.
    mov HDR_SYSSIZE, %eax
    shl $4, %eax
    mov %eax, %es:LOW_ADDR+ST2_PRELOADED
    # Enter it as stage1 does; DL is the first hard disk (stage2 ignores it here: grub.cfg is
    # where the command line says, or searched for on every disk).
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7C00, %sp
    mov $0x80, %dl
    mov $1, %bl
    xor %si, %si
    ljmp $0, $LOW_ADDR

fail:
    call print
    mov $halted, %si
    call print
5:  hlt
    jmp 5b

bad_file:
    .asciz "\r\nvboot.lkrn: the file is damaged (stage2 is not where the setup code expects it)"
overlap:
    .asciz "\r\nvboot.lkrn: the boot loader put the setup code where stage2's low part must go (0x7E00 on)"
halted:
    .asciz "; the machine is halted.\r\n"

    .balign 512, 0
# stage2's low part follows (cargo xtask build appends it).
low_part:
