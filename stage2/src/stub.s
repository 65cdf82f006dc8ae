# The resident real-mode stub: the guest's INT 13h and INT 15h land here. It is copied by
# stage2 to the top of conventional memory (0040:0013 lowered by its size) and runs at
# STUB_SEG:0000, so every reference is an offset from stub_start, through CS.
#
# It saves the caller's registers, switches to its own stack, enters 32-bit protected mode and
# calls the engine (relocated to high memory); the engine may come back here to call the
# original BIOS vectors in real mode; at the end the stub restores the caller's registers,
# copies CF into the caller's saved FLAGS and IRETs. The header's field offsets come from
# vboot::stub::StubHeader (src/stub.rs), as `const` operands of the global_asm! that includes
# this file (stage2/src/main.rs).

.set S_INT13_OFF, {S_INT13_OFF}
.set S_INT15_OFF, {S_INT15_OFF}
.set S_TOTAL_BYTES, {S_TOTAL_BYTES}
.set S_BOUNCE_OFF, {S_BOUNCE_OFF}
.set S_OLD13, {S_OLD13}
.set S_OLD15, {S_OLD15}
.set S_PM_ENTRY, {S_PM_ENTRY}
.set S_PM_RESUME, {S_PM_RESUME}
.set S_BACK16, {S_BACK16}
.set S_BIOS16, {S_BIOS16}
.set S_RM_BACK, {S_RM_BACK}
.set S_RM_BIOS, {S_RM_BIOS}
.set S_GDT_DESC, {S_GDT_DESC}
.set S_GDT, {S_GDT}
.set S_ENGINE_ESP, {S_ENGINE_ESP}
.set S_RM_SP, {S_RM_SP}
.set S_BUSY, {S_BUSY}
.set S_GUEST_SS, {S_GUEST_SS}
.set S_GUEST_SP, {S_GUEST_SP}
.set S_SAVED_IDT, {S_SAVED_IDT}
.set S_BIOS_TARGET, {S_BIOS_TARGET}
.set S_FRAME, {S_FRAME}
.set S_VECTOR, {S_VECTOR}
.set S_GUEST_FS, {S_GUEST_FS}
.set S_BREGS, {S_BREGS}
.set S_ENGINE_SAVED_ESP, {S_ENGINE_SAVED_ESP}
.set S_GUEST_GS, {S_GUEST_GS}
.set S_GUEST_ESP_HI, {S_GUEST_ESP_HI}
.set S_CALLS, {S_CALLS}
.set S_DAP, {S_DAP}
.set S_DISKETTE_TABLE, {S_DISKETTE_TABLE}
.set S_CODE, {S_CODE}
.set S_FAST_RUN, {S_FAST_RUN}
.set S_FAST_CALLS, {S_FAST_CALLS}
.set S_ENGINE_BIOS_CALLS, {S_ENGINE_BIOS_CALLS}
.set F_FLAGS, S_FAST_RUN + {F_FLAGS}
.set F_GUEST_DRIVE, S_FAST_RUN + {F_GUEST_DRIVE}
.set F_HOST_DRIVE, S_FAST_RUN + {F_HOST_DRIVE}
.set F_SECTORS, S_FAST_RUN + {F_SECTORS}
.set F_FIRST_LBA, S_FAST_RUN + {F_FIRST_LBA}
.set F_HOST_LBA, S_FAST_RUN + {F_HOST_LBA}
.set FAST_RUN_VALID, {FAST_RUN_VALID}
.set FAST_RUN_WRITABLE, {FAST_RUN_WRITABLE}

# The register block's offsets (R_*) and SAVE_GPRS/LOAD_GPRS: regs.s, which the same global_asm!
# includes first.

.set SEL_CODE32, 0x08
.set SEL_DATA32, 0x10
.set SEL_CODE16, 0x18
.set SEL_DATA16, 0x20

# Bounce buffer and stack follow the code (see stub_end).
.set BOUNCE_BYTES, {BOUNCE_BYTES}
.set STACK_BYTES,  1024

.section .stub, "a"
.code16
.global stub_start
.global stub_end
.global stub_image_end
stub_start:
    .ascii "VBSTUB01"
    .word int13_entry - stub_start
    .word int15_entry - stub_start
    .word stub_end - stub_start
    .word stub_image_end - stub_start
    .fill S_PM_ENTRY - S_OLD13, 1, 0                  # old vectors: stage2 fills
    .fill S_BACK16 - S_PM_ENTRY, 1, 0                 # engine entry points: stage2 fills
    .long back16 - stub_start
    .word SEL_CODE16, 0
    .long bios16 - stub_start
    .word SEL_CODE16, 0
    .word rm_back - stub_start, 0                     # segment: stage2 fills
    .word rm_bios - stub_start, 0
    .word S_GDT + 5 * 8 - S_GDT - 1                   # GDT limit; base: stage2 fills
    .long 0
    .word 0
    .quad 0
    .quad 0x00CF9A000000FFFF                          # 0x08 code32 flat
    .quad 0x00CF92000000FFFF                          # 0x10 data32 flat
    .quad 0x00009A000000FFFF                          # 0x18 code16, base = stub: stage2 fills
    .quad 0x000092000000FFFF                          # 0x20 data16, base = stub: stage2 fills
    .fill S_CODE - S_ENGINE_ESP, 1, 0

# The INT 13h "safe hook" header (docs/int13.md, "The safe-hook header"; vboot::handoff): a 3-byte
# jump over it, "$INT13SF", the vendor, the previous vector, flags (0: let Windows keep
# compatibility mode), and, at memdisk's +27, the hand-off table's address, then the boot ID. stage2
# fills the numbers.
int13_entry:
    .byte 0xEB, int13_body - int13_entry - 2
    nop
    .ascii "$INT13SF"
    .ascii "VBOOT   "
    .long 0                                           # previous INT 13h vector
    .long 0                                           # flags
    .long 0                                           # hand-off table address
    .quad 0                                           # boot ID
int13_body:
    cli
    cmpb $0, %cs:S_BUSY
    jne 1f
    cmp $0x42, %ah
    je fast13
    cmp $0x43, %ah
    je fast13
slow13:
    movw $0x13, %cs:S_VECTOR
    jmp common_entry
1:  ljmp *%cs:S_OLD13

# The real-mode fast path (docs/int13.md, "The real-mode fast path"). A guest reads its disk in
# long sequential runs; where the engine has published a run that lies straight on the host
# disk, an AH=42h (or, for a writable run, AH=43h) call wholly inside it is the host's own call
# with the LBA moved. Making it here saves the four mode switches and the engine's work of a
# call through protected mode. Anything unusual (another packet form, a buffer not below the
# stub, a sector outside the run, an error from the BIOS) goes the slow way, so the engine
# alone decides every answer that is not a plain success.
fast13:
    testb $FAST_RUN_VALID, %cs:F_FLAGS
    jz slow13
    cmp %cs:F_GUEST_DRIVE, %dl
    jne slow13
    cmp $0x42, %ah
    je 1f
    testb $FAST_RUN_WRITABLE, %cs:F_FLAGS
    jz slow13
    cmp $1, %al                             # 0 or 1: write without verify
    ja slow13
1:  push %ds
    push %si
    push %eax
    push %ebx
    push %ecx
    push %edx
    cmpb $16, (%si)
    jb fast_undo
    mov 4(%si), %ebx                        # buffer: offset, then segment
    cmp $0xFFFFFFFF, %ebx                   # the 64-bit flat buffer form
    je fast_undo
    movzwl 2(%si), %ecx
    test %ecx, %ecx
    jz fast_undo
    cmp $127, %ecx
    ja fast_undo
    # The buffer must end below the stub: the guest must not reach vboot's memory.
    mov %ebx, %eax
    shr $16, %eax
    shl $4, %eax
    movzwl %bx, %edx
    add %edx, %eax
    mov %ecx, %edx
    shl $9, %edx
    add %edx, %eax
    mov %cs, %dx
    movzwl %dx, %edx
    shl $4, %edx
    cmp %edx, %eax
    ja fast_undo
    # offset = LBA - first, 64-bit; offset + count must not pass the run's end.
    mov 8(%si), %eax
    mov 12(%si), %edx
    sub %cs:F_FIRST_LBA, %eax
    sbb %cs:F_FIRST_LBA+4, %edx
    jc fast_undo
    test %edx, %edx
    jnz fast_undo
    add %eax, %ecx
    jc fast_undo
    cmp %cs:F_SECTORS, %ecx
    ja fast_undo
    # The host's packet: the guest's count and buffer, the LBA moved onto the host disk.
    movw $16, %cs:S_DAP
    mov 2(%si), %cx
    mov %cx, %cs:S_DAP+2
    mov %ebx, %cs:S_DAP+4
    add %cs:F_HOST_LBA, %eax
    adc %cs:F_HOST_LBA+4, %edx
    mov %eax, %cs:S_DAP+8
    mov %edx, %cs:S_DAP+12
    movb $1, %cs:S_BUSY                     # a call from inside the BIOS chains
    mov %sp, %bx
    mov %ss:12(%bx), %eax                   # the caller's AX: AH = 42h/43h, AL = write flags
    mov %cs:F_HOST_DRIVE, %dl
    push %cs
    pop %ds
    mov $S_DAP, %si
    pushf
    lcall *%cs:S_OLD13
    cli
    movb $0, %cs:S_BUSY
    jc fast_undo
    incl %cs:S_FAST_CALLS
    pop %edx
    pop %ecx
    pop %ebx
    add $4, %sp                             # EAX stays the BIOS's answer (AH = 0)
    pop %si
    pop %ds
    push %bp
    mov %sp, %bp
    andw $0xFFFE, 6(%bp)                    # CF clear in the FLAGS IRET restores
    pop %bp
    iret
fast_undo:
    pop %edx
    pop %ecx
    pop %ebx
    pop %eax
    pop %si
    pop %ds
    jmp slow13

# Only the memory-size calls go to the engine; everything else (4Fh from the keyboard IRQ, 86h
# waits ...) chains at once and never leaves real mode.
int15_entry:
    cmp $0xE820, %eax
    je 2f
    cmp $0xE801, %ax
    je 2f
    cmp $0x88, %ah
    je 2f
3:  ljmp *%cs:S_OLD15
2:  cli
    cmpb $0, %cs:S_BUSY
    jne 3b
    movw $0x15, %cs:S_VECTOR

common_entry:
    movb $1, %cs:S_BUSY
    incl %cs:S_CALLS
    SAVE_GPRS S_FRAME
    mov %ds, %cs:S_FRAME+R_DS
    mov %es, %cs:S_FRAME+R_ES
    mov %fs, %cs:S_GUEST_FS
    mov %gs, %cs:S_GUEST_GS
    mov %ss, %cs:S_GUEST_SS
    mov %sp, %cs:S_GUEST_SP
    mov %esp, %eax
    shr $16, %eax
    mov %ax, %cs:S_GUEST_ESP_HI
    mov %sp, %bp
    mov %ss:4(%bp), %ax                     # the caller's FLAGS, pushed by INT
    mov %ax, %cs:S_FRAME+R_FLAGS
    mov %cs, %ax
    mov %ax, %ss
    # Private stack at the top of the stub. All 32 bits of ESP: BIOS code compiled from C uses
    # ESP-based addressing even in real mode, so stale high bits would send it astray.
    mov $(stub_end - stub_start), %esp
    call enter_engine
    mov %cs:S_GUEST_SS, %ax
    mov %ax, %ss
    mov %cs:S_GUEST_ESP_HI, %sp
    shl $16, %esp
    mov %cs:S_GUEST_SP, %sp                 # the caller's whole ESP, high bits included
    mov %sp, %bp
    mov %ss:4(%bp), %ax
    and $0xFFFE, %ax
    mov %cs:S_FRAME+R_FLAGS, %bx
    and $1, %bx
    or %bx, %ax
    mov %ax, %ss:4(%bp)                     # CF into the FLAGS IRET restores
    mov %cs:S_GUEST_FS, %fs
    mov %cs:S_GUEST_GS, %gs
    mov %cs:S_FRAME+R_DS, %ds
    mov %cs:S_FRAME+R_ES, %es
    LOAD_GPRS S_FRAME
    movb $0, %cs:S_BUSY
    iret

enter_engine:
    mov %sp, %cs:S_RM_SP
    sidt %cs:S_SAVED_IDT
    # The engine lives above 1 MiB: make sure A20 is on (port 92h; bit 0 would reset).
    in $0x92, %al
    test $2, %al
    jnz 1f
    or $2, %al
    and $0xFE, %al
    out %al, $0x92
1:  lgdtl %cs:S_GDT_DESC
    mov %cs, %si
    movzwl %si, %esi
    shl $4, %esi                            # ESI = the stub's linear address, for the engine
    mov %cs:S_ENGINE_ESP, %ebx
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *%cs:S_PM_ENTRY

# The engine is done: 16-bit protected mode (CS base = stub) -> real mode -> back to the caller
# of enter_engine.
back16:
    mov $SEL_DATA16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov %cr0, %eax
    and $0xFFFFFFFE, %eax
    mov %eax, %cr0
    ljmp *%cs:S_RM_BACK
rm_back:
    mov %cs, %ax
    mov %ax, %ss
    mov %ax, %ds
    mov %ax, %es
    movzwl %cs:S_RM_SP, %esp
    lidt %cs:S_SAVED_IDT
    ret

# The engine wants the original BIOS: registers are in S_BREGS, the vector in S_BIOS_TARGET.
bios16:
    mov $SEL_DATA16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov %cr0, %eax
    and $0xFFFFFFFE, %eax
    mov %eax, %cr0
    ljmp *%cs:S_RM_BIOS
rm_bios:
    mov %cs, %ax
    mov %ax, %ss
    movzwl %cs:S_RM_SP, %esp                # the engine's stack address must not leak in
    lidt %cs:S_SAVED_IDT
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    pushw %cs:S_BREGS+R_DS
    pushw %cs:S_BREGS+R_ES
    LOAD_GPRS S_BREGS
    pop %es
    pop %ds
    incl %cs:S_ENGINE_BIOS_CALLS            # before the call: the FLAGS after it are the BIOS's
    # What INT does: FLAGS (IF clear, as the guest's INT left it), then a far call.
    pushf
    lcall *%cs:S_BIOS_TARGET
    cli
    SAVE_GPRS S_BREGS
    mov %ds, %cs:S_BREGS+R_DS
    mov %es, %cs:S_BREGS+R_ES
    pushf
    popw %cs:S_BREGS+R_FLAGS
    lgdtl %cs:S_GDT_DESC
    mov %cs, %si
    movzwl %si, %esi
    shl $4, %esi
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl *%cs:S_PM_RESUME

# Starting a CD's no-emulation boot image. Once at its load segment the image may cover stage2,
# so stage2 reads it into free conventional memory at or above that address, fills the fields
# below and real_mode_jumps here (DL = boot drive, segments 0, SP = 7C00h). The copy runs from
# the hidden stub, which no boot image reaches, with interrupts off (the image may cover the
# stack), forward in 32 KiB steps: the source never lies below the destination.
.global stub_guest_start
stub_guest_start:
    cli
    cld
    mov %cs:(guest_src_segment - stub_start), %ds
    mov %cs:(guest_dst_segment - stub_start), %es
    mov %cs:(guest_paragraphs - stub_start), %bx
1:  mov %bx, %cx
    cmp $0x800, %cx
    jbe 2f
    mov $0x800, %cx
2:  sub %cx, %bx
    shl $3, %cx                                       # paragraphs to words
    xor %si, %si
    xor %di, %di
    rep movsw
    mov %ds, %ax
    add $0x800, %ax
    mov %ax, %ds
    mov %es, %ax
    add $0x800, %ax
    mov %ax, %es
    test %bx, %bx
    jnz 1b
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    xor %bx, %bx
    xor %cx, %cx
    xor %si, %si
    xor %di, %di
    sti
    ljmp *%cs:(guest_target - stub_start)
.global stub_guest_params
stub_guest_params:
guest_src_segment: .word 0
guest_dst_segment: .word 0
guest_paragraphs:  .word 0
guest_target:      .word 0, 0

    .balign 16
stub_image_end:
    # Not part of the copied bytes' contents: the bounce buffer and the stack, zeroed by stage2.
    .fill BOUNCE_BYTES + STACK_BYTES, 1, 0
stub_end:
