# stage2 entry and the real-mode edges: A20, the switch to 32-bit protected mode, and the thunk
# that lets protected-mode Rust call the BIOS. Everything else is Rust.
#
# Segment selectors in our GDT:
.set SEL_CODE32, 0x08
.set SEL_DATA32, 0x10
.set SEL_CODE16, 0x18
.set SEL_DATA16, 0x20
# The real-mode stack used while a BIOS call runs (below stage1's old home at 0x7C00).
.set RM_STACK_TOP, 0x7C00
# stage2's protected-mode stack: 1 MiB to 1 MiB + 64 KiB (main.rs keeps its heap above it).
.set PM_STACK_TOP, 0x110000

.section .header, "awx"
.code16
.global _start16
_start16:
    jmp .Lentry16               # 2-byte short jump: the header below sits at offset 4
    .byte 0, 0
    .ascii "VBOOTST2"           # Stage2Header (src/install.rs), checked by stage1
    .long __stage2_sectors      # the whole of stage2.bin: what vboot-install writes
    .ascii "0.1.0"
    .fill 11, 1, 0
    .long __stage2_low_sectors  # the low part: what stage1 loads (offset 32)
.global stage2_preloaded
stage2_preloaded:
    .long 0                     # offset 36: 0 from stage1; vboot.lkrn's setup code (stage2/lkrn/
                                # setup.s) sets the bytes it left at 0x100000 (src/lkrn.rs)

.Lentry16:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $RM_STACK_TOP, %esp             # all 32 bits: BIOS C code addresses the stack through ESP
    ljmp $0, $.Lcs_ok
.Lcs_ok:
    mov %dl, boot_drive
    mov %bl, stage1_used_lba
    mov %si, stage_patch_ptr
    cld
    sti
    call enable_a20
    mov %al, a20_enabled
    cli
    lgdtl gdt_descriptor
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $.Lpm_entry

.section .text16, "awx"
.code16
# Returns AL = 1 if the A20 line is on. Tries the BIOS (INT 15h AX=2401h), then port 0x92.
enable_a20:
    call a20_is_on
    jnz 1f
    mov $0x2401, %ax
    int $0x15
    call a20_is_on
    jnz 1f
    in $0x92, %al
    test $2, %al
    jnz 2f
    or $2, %al
    and $0xFE, %al              # bit 0 would reset the machine
    out %al, $0x92
2:  call a20_is_on
    jnz 1f
    xor %al, %al
    ret
1:  mov $1, %al
    ret

# ZF clear (and AX != 0) when 0000:0500 and FFFF:0510 (= 0x100500) are different bytes.
a20_is_on:
    push %ds
    push %es
    push %bx
    xor %ax, %ax
    mov %ax, %ds
    not %ax
    mov %ax, %es
    mov %ds:0x500, %bl
    mov %es:0x510, %bh
    movb $0x00, %ds:0x500
    movb $0xFF, %es:0x510
    cmpb $0xFF, %ds:0x500
    mov %bh, %es:0x510
    mov %bl, %ds:0x500
    mov $0, %ax
    je 1f
    inc %ax
1:  test %ax, %ax
    pop %bx
    pop %es
    pop %ds
    ret

.code32
.Lpm_entry:
    mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    # vboot.lkrn: the high part and the engine wait at 0x100000. Moved before anything else,
    # still on the real-mode stack below 0x7C00: the protected-mode stack's range holds them.
    cmpb $0, a20_enabled
    je 1f
    cmpl $0, stage2_preloaded
    je 1f
    call move_preloaded
1:
    # The protected-mode stack lives at 1 MiB (PM_STACK_TOP), below the high part; RAM at 1 MiB
    # exists on anything that runs us.
    mov $PM_STACK_TOP, %esp
    cmpb $0, a20_enabled
    je .Lno_a20
    cmpl $0, stage2_preloaded
    jne 2f
    call load_high_part
2:
    # QEMU zeroes RAM; real machines do not.
    mov $_bss_start, %edi
    mov $_bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    movzbl a20_enabled, %eax
    push %eax
    movzwl stage_patch_ptr, %eax
    push %eax
    movzbl boot_drive, %eax
    push %eax
    call stage2_main
1:  cli
    hlt
    jmp 1b

# vboot.lkrn (docs/boot-layout.md): a Linux boot loader put `stage2_preloaded` bytes at
# PRELOAD_BASE: the high part, then engine.bin (the setup code checked it holds the high part
# at least). The high part belongs at 0x110000 and the engine right above stage2's end
# (_stage2_high_end), where main.rs starts the heap only after it. Both move up over their own
# bytes, so each is copied from its end down; the engine first, as the high part's new place
# covers the engine's old one.
.set PRELOAD_BASE, 0x100000
move_preloaded:
    mov stage2_preloaded, %ecx
    sub $__stage2_high_bytes, %ecx
    mov $PRELOAD_BASE + __stage2_high_bytes, %esi
    mov $_stage2_high_end, %edi
    call copy_down
    mov $__stage2_high_bytes, %ecx
    mov $PRELOAD_BASE, %esi
    mov $_stage2_high_start, %edi
# ECX bytes from ESI to EDI (above it), last byte first.
copy_down:
    lea -1(%esi,%ecx), %esi
    lea -1(%edi,%ecx), %edi
    std
    rep movsb
    cld
    ret

# stage1 loaded only the low part (__stage2_low_sectors); the rest of stage2 follows it on disk
# and is linked at 0x110000, which real mode cannot reach. Read it the way stage1 read the disk
# (AH=42h if BL said so, else AH=02h one sector at a time), through the bounce buffer at 0x10000
# (the same one the Rust code uses: bios.rs), and copy each piece up. A read error prints a line through the BIOS and halts: nothing else
# of stage2 exists yet to report it.
.set LOAD_BOUNCE, 0x10000
.set LOAD_BOUNCE_SEG, 0x1000
.set LOAD_DAP, 0x0600
.set LOAD_CHUNK_SECTORS, 127        # EDD's most per call: the bounce buffer, in one 64 KiB DMA page
# The register block's offsets (R_*, R_SIZE) and SAVE_GPRS/LOAD_GPRS: regs.s (vboot::realmode::Regs).
load_high_part:
    movzwl stage_patch_ptr, %esi
    mov (%esi), %eax                # StagePatch.stage2_lba (u64): where the low part starts
    mov 4(%esi), %edx
    add $__stage2_low_sectors, %eax
    adc $0, %edx
    mov %eax, load_lba
    mov %edx, load_lba+4
    movl $__stage2_high_sectors, load_left
    movl $_stage2_high_start, load_dest
    cmpb $0, stage1_used_lba
    jne .Lload_next
    call load_chs_geometry
.Lload_next:
    mov load_left, %ecx
    test %ecx, %ecx
    jz .Lload_done
    cmp $LOAD_CHUNK_SECTORS, %ecx
    jbe 1f
    mov $LOAD_CHUNK_SECTORS, %ecx
1:  mov %ecx, load_count
    cmpb $0, stage1_used_lba
    je 2f
    call load_read_lba
    jmp 3f
2:  call load_read_chs
3:  mov load_count, %ecx
    shl $7, %ecx                    # dwords
    mov $LOAD_BOUNCE, %esi
    mov load_dest, %edi
    rep movsl
    mov %edi, load_dest
    mov load_count, %eax
    sub %eax, load_left
    add %eax, load_lba
    adcl $0, load_lba+4
    jmp .Lload_next
.Lload_done:
    ret

# One AH=42h read of load_count sectors at load_lba into the bounce buffer, three tries.
load_read_lba:
    movl $3, load_tries
1:  movw $0x10, LOAD_DAP
    mov load_count, %eax
    mov %ax, LOAD_DAP+2
    movw $0, LOAD_DAP+4
    movw $LOAD_BOUNCE_SEG, LOAD_DAP+6
    mov load_lba, %eax
    mov %eax, LOAD_DAP+8
    mov load_lba+4, %eax
    mov %eax, LOAD_DAP+12
    call load_clear_regs
    movl $0x4200, load_regs+R_EAX
    movzbl boot_drive, %eax
    mov %eax, load_regs+R_EDX
    movl $LOAD_DAP, load_regs+R_ESI
    mov $0x13, %eax
    call load_bios
    testw $1, load_regs+R_FLAGS
    jz 2f
    call load_reset
    decl load_tries
    jnz 1b
    jmp load_failed
2:  ret

# load_count sectors from load_lba, one AH=02h read each (multi-sector CHS reads that cross a
# track are not portable), into consecutive bounce-buffer sectors.
load_read_chs:
    pushl load_lba
    pushl load_lba+4
    movl $0, load_done
1:  mov load_done, %eax
    cmp load_count, %eax
    jae 4f
    movl $3, load_tries
2:  cmpl $0, load_lba+4
    jne load_failed
    mov load_lba, %eax
    xor %edx, %edx
    divl load_spt                   # eax = track, edx = sector index
    lea 1(%edx), %ecx               # CL bits 0-5: sector number
    xor %edx, %edx
    divl load_heads                 # eax = cylinder, edx = head
    cmp $1023, %eax
    ja load_failed
    mov %al, %ch                    # CH: cylinder bits 0-7; CL bits 6-7: cylinder bits 8-9
    shr $2, %eax
    and $0xC0, %eax
    or %eax, %ecx
    shl $8, %edx
    movzbl boot_drive, %eax
    or %eax, %edx                   # DH = head, DL = drive
    push %ecx
    push %edx
    call load_clear_regs
    pop %edx
    pop %ecx
    mov %ecx, load_regs+R_ECX
    mov %edx, load_regs+R_EDX
    movl $0x0201, load_regs+R_EAX
    mov load_done, %eax
    shl $9, %eax
    mov %eax, load_regs+R_EBX
    movw $LOAD_BOUNCE_SEG, load_regs+R_ES
    mov $0x13, %eax
    call load_bios
    testw $1, load_regs+R_FLAGS
    jz 3f
    call load_reset
    decl load_tries
    jnz 2b
    jmp load_failed
3:  incl load_done
    addl $1, load_lba
    adcl $0, load_lba+4
    jmp 1b
4:  popl load_lba+4
    popl load_lba
    ret

# Sectors per track and heads of the boot drive (AH=08h), as stage1 found them.
load_chs_geometry:
    call load_clear_regs
    movl $0x0800, load_regs+R_EAX
    movzbl boot_drive, %eax
    mov %eax, load_regs+R_EDX
    mov $0x13, %eax
    call load_bios
    testw $1, load_regs+R_FLAGS
    jnz load_failed
    mov load_regs+R_ECX, %eax
    and $0x3F, %eax
    jz load_failed
    mov %eax, load_spt
    movzbl load_regs+R_EDX+1, %eax
    inc %eax
    mov %eax, load_heads
    ret

load_reset:
    call load_clear_regs
    movzbl boot_drive, %eax
    mov %eax, load_regs+R_EDX
    mov $0x13, %eax                 # AH=00h (cleared): reset the drive before a retry
    jmp load_bios

load_clear_regs:
    mov $load_regs, %edi
    mov $R_SIZE / 4, %ecx
    xor %eax, %eax
    rep stosl
    ret

# bios_call(EAX = vector, &load_regs)
load_bios:
    push $load_regs
    push %eax
    call bios_call
    add $8, %esp
    ret

.Lno_a20:
    mov $no_a20_message, %esi
    jmp load_halt_with
load_failed:
    mov $load_failed_message, %esi
load_halt_with:
    movzbl (%esi), %eax
    test %eax, %eax
    jz 2f
    push %esi
    call load_clear_regs
    pop %esi
    movzbl (%esi), %eax
    or $0x0E00, %eax
    mov %eax, load_regs+R_EAX
    movl $0x0007, load_regs+R_EBX
    push %esi
    mov $0x10, %eax
    call load_bios
    pop %esi
    inc %esi
    jmp load_halt_with
2:  cli
    hlt
    jmp 2b

# void bios_call(uint32_t vector, Regs *regs)
# Regs (vboot::realmode): eax ebx ecx edx esi edi ebp (u32 each), ds es flags (u16), padded to
# R_SIZE. The registers go in and come back through `thunk_regs`, which real mode can address.
.global bios_call
bios_call:
    pushal
    mov 36(%esp), %eax
    mov %al, .Lint_vector       # patch the vector byte of the `int` below
    mov 40(%esp), %esi
    mov $thunk_regs, %edi
    mov $R_SIZE / 4, %ecx
    rep movsl
    mov %esp, saved_esp
    sgdt saved_gdt
    sidt saved_idt
    ljmp $SEL_CODE16, $.Lpm16

.code16
.Lpm16:
    mov $SEL_DATA16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov %cr0, %eax
    and $0xFFFFFFFE, %eax
    mov %eax, %cr0
    ljmp $0, $.Lreal
.Lreal:
    xor %ax, %ax
    mov %ax, %ss
    mov $RM_STACK_TOP, %esp             # all 32 bits: BIOS C code addresses the stack through ESP
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ds
    lidt real_mode_idt
    pushw thunk_regs+R_DS
    pushw thunk_regs+R_ES
    LOAD_GPRS thunk_regs
    pop %es
    pop %ds
    sti
    .byte 0xCD                  # int imm8
.Lint_vector:
    .byte 0x00
    cli
    pushfw                      # FLAGS as the BIOS left them (16 bits: the field is a u16)
    SAVE_GPRS thunk_regs
    mov %ds, %cs:thunk_regs+R_DS
    mov %es, %cs:thunk_regs+R_ES
    popw %cs:thunk_regs+R_FLAGS
    xor %ax, %ax
    mov %ax, %ds
    # Some BIOSes reload GDTR/IDTR; put ours back.
    lgdtl saved_gdt
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $.Lback32

.code32
.Lback32:
    mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov saved_esp, %esp
    lidt saved_idt
    mov 40(%esp), %edi
    mov $thunk_regs, %esi
    mov $R_SIZE / 4, %ecx
    rep movsl
    popal
    ret

# void real_mode_jump(uint32_t cs_ip, uint32_t dl, uint32_t si)
# Leave protected mode for good and jump to a real-mode far address with DL set, the way a BIOS
# hands over a boot sector: segments 0, SP = 0x7C00, interrupts on. SI is 0, or the offset of the
# partition entry an MBR hands a partition's boot sector (DS:SI, with DS = 0).
.global real_mode_jump
real_mode_jump:
    cli
    mov 4(%esp), %eax
    mov %eax, jump_target
    mov 8(%esp), %eax
    mov %al, jump_dl
    mov 12(%esp), %eax
    mov %ax, jump_si
    ljmp $SEL_CODE16, $.Ljump16
.code16
.Ljump16:
    mov $SEL_DATA16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr0, %eax
    and $0xFFFFFFFE, %eax
    mov %eax, %cr0
    ljmp $0, $.Ljump_real
.Ljump_real:
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $0x7C00, %esp
    lidt real_mode_idt
    mov jump_dl, %dl
    xor %eax, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    movzwl jump_si, %esi
    xor %edi, %edi
    xor %ebp, %ebp
    and $0xFF, %edx
    sti
    ljmp *jump_target

.section .data16, "aw"
.balign 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    # 0x08 code32, flat 4 GiB
    .quad 0x00CF92000000FFFF    # 0x10 data32, flat 4 GiB
    .quad 0x00009A000000FFFF    # 0x18 code16, 64 KiB, base 0 (for the way down to real mode)
    .quad 0x000092000000FFFF    # 0x20 data16, 64 KiB, base 0
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
real_mode_idt:
    .word 0x3FF
    .long 0
.balign 4
.global thunk_regs
thunk_regs:
    .fill R_SIZE, 1, 0
saved_esp:
    .long 0
saved_gdt:
    .fill 6, 1, 0
saved_idt:
    .fill 6, 1, 0
jump_target:
    .long 0
jump_dl:
    .byte 0
jump_si:
    .word 0
.global boot_drive
boot_drive:
    .byte 0
.global stage1_used_lba
stage1_used_lba:
    .byte 0
a20_enabled:
    .byte 0
.balign 2
stage_patch_ptr:
    .word 0
.balign 4
load_regs:
    .fill R_SIZE, 1, 0
load_lba:
    .quad 0
load_left:
    .long 0
load_count:
    .long 0
load_done:
    .long 0
load_dest:
    .long 0
load_tries:
    .long 0
load_spt:
    .long 0
load_heads:
    .long 0
load_failed_message:
    .asciz "\r\nvboot: cannot read the rest of stage2 from the boot disk (INT 13h failed); the machine is halted.\r\n"
no_a20_message:
    .asciz "\r\nvboot: the A20 line could not be enabled, so memory above 1 MiB is unusable; the machine is halted.\r\n"
