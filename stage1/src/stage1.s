# vboot stage1: sector 0 of the host disk.
#
# Loads stage2 (StagePatch below: LBA + sector count, filled by vboot-install) to 0000:8000 and
# jumps to it with DL = boot drive, BL = 1 if it used LBA reads (0: CHS), SI -> the patch area. Assembly because 424 bytes must hold
# an LBA path, a CHS fallback and error reporting; everything else in vboot is Rust.
#
# Scratch memory at 0x600 (free: above the BDA, below our stack):
#   0x600 disk address packet: size, reserved, count, offset, segment, LBA (64-bit)
#   0x610 sectors still to load   0x612 1 = use AH=42h   0x613 drive
#   0x614 sectors per track       0x616 heads
.set DAP,        0x600
.set DAP_COUNT,  0x602
.set DAP_SEG,    0x606
.set DAP_LBA,    0x608
.set REMAINING,  0x610
.set USE_LBA,    0x612
.set DRIVE,      0x613
.set SPT,        0x614
.set HEADS,      0x616
.set STAGE2_SEG, 0x0800
# 64 sectors = 32 KiB and stage2 starts 32 KiB-aligned, so no chunk crosses a 64 KiB boundary
# (a DMA limit many BIOSes have) and every chunk is below the 127-sector EDD limit.
.set CHUNK,      64

.section .boot, "awx"
.code16
.global _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7C00, %sp
    # Some BIOSes enter at 07C0:0000; make CS:IP 0000:7Cxx so near addresses are right.
    ljmp $0, $.Lcs_ok
.Lcs_ok:
    sti
    cld
    # Buggy BIOSes pass DL = 0 or garbage when booting a hard disk; we only live on 80h-8Fh.
    mov %dl, %al
    and $0xF0, %al
    cmp $0x80, %al
    je .Ldrive_ok
    mov $0x80, %dl
.Ldrive_ok:
    mov %dl, DRIVE
    movb $0, USE_LBA
    testb $1, patch_flags
    jnz .Lgeometry
    mov $0x41, %ah
    mov $0x55AA, %bx
    int $0x13
    jc .Lgeometry
    cmp $0xAA55, %bx
    jne .Lgeometry
    test $1, %cl
    jz .Lgeometry
    movb $1, USE_LBA
    jmp .Lsetup

.Lgeometry:
    mov DRIVE, %dl
    mov $0x08, %ah
    xor %di, %di
    int $0x13
    push $0
    pop %es
    mov $'G', %al
    jc .Lfail
    and $0x3F, %cx
    jz .Lfail
    mov %cx, SPT
    movzbw %dh, %ax
    inc %ax
    mov %ax, HEADS

.Lsetup:
    movw $0x0010, DAP
    movw $0, DAP+4
    movw $STAGE2_SEG, DAP_SEG
    mov patch_lba, %eax
    mov %eax, DAP_LBA
    mov patch_lba+4, %eax
    mov %eax, DAP_LBA+4
    mov patch_sectors, %ax
    mov %ax, REMAINING
    test %ax, %ax
    mov $'Z', %al
    jz .Lfail

.Lnext_chunk:
    mov REMAINING, %ax
    test %ax, %ax
    jz .Lloaded
    mov $CHUNK, %bx
    cmpb $0, USE_LBA
    jne 1f
    mov $1, %bx                 # CHS: one sector per call; multi-track reads are not portable
1:  cmp %bx, %ax
    jae 2f
    mov %ax, %bx
2:  mov %bx, DAP_COUNT
    mov DRIVE, %dl
    cmpb $0, USE_LBA
    je .Lchs_read
    mov $DAP, %si
    mov $0x42, %ah
    int $0x13
    jmp .Lread_done

.Lchs_read:
    mov $'C', %al
    cmpl $0, DAP_LBA+4
    jne .Lfail
    mov DAP_LBA, %eax
    xor %edx, %edx
    movzwl SPT, %ecx
    div %ecx                    # eax = track, edx = sector index
    inc %dx
    mov %dx, %cx                # CL = sector (1-based)
    xor %edx, %edx
    movzwl HEADS, %ebx
    div %ebx                    # eax = cylinder, edx = head
    cmp $1023, %eax
    ja .Lchs_range
    mov %dl, %dh
    mov %al, %ch
    shl $6, %ah
    or %ah, %cl
    mov DRIVE, %dl
    mov DAP_SEG, %es
    xor %bx, %bx
    mov $0x0201, %ax
    int $0x13
    push $0
    pop %es
.Lread_done:
    mov $'R', %al
    jc .Lfail

    mov DAP_COUNT, %ax
    sub %ax, REMAINING
    movzwl %ax, %eax
    add %eax, DAP_LBA
    adcl $0, DAP_LBA+4
    shl $5, %ax                 # sectors * 512 / 16 = paragraphs
    add %ax, DAP_SEG
    jmp .Lnext_chunk

.Lchs_range:
    mov $'C', %al
    jmp .Lfail

.Lloaded:
    mov $(STAGE2_SEG * 16 + 4), %si
    mov $stage2_magic, %di
    mov $8, %cx
    repe cmpsb
    mov $'S', %al
    jne .Lfail
    mov DRIVE, %dl
    mov USE_LBA, %bl
    mov $patch_lba, %si
    ljmp $0, $(STAGE2_SEG * 16)

# Print "vboot stage1 error X" and wait: no jump into garbage, no reboot loop. Ctrl-Alt-Del works.
.Lfail:
    push %ax
    mov $msg, %si
1:  lodsb
    test %al, %al
    jz 2f
    mov $0x0E, %ah
    mov $0x0007, %bx
    int $0x10
    jmp 1b
2:  pop %ax
    mov $0x0E, %ah
    int $0x10
3:  sti
    hlt
    jmp 3b

msg:
    .asciz "vboot stage1 error "
stage2_magic:
    .ascii "VBOOTST2"

# StagePatch (src/install.rs): offset 0x1A8, 16 bytes.
.section .patch, "aw"
patch_lba:
    .quad 3
patch_sectors:
    .word 0
patch_flags:
    .byte 0
patch_version:
    .byte 1
    .ascii "VBt1"
