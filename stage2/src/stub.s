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

# The register block's offsets (R_*) and SAVE_GPRS/LOAD_GPRS: regs.s, which the same global_asm!
# includes first.

.set SEL_CODE32, 0x08
.set SEL_DATA32, 0x10
.set SEL_CODE16, 0x18
.set SEL_DATA16, 0x20

# Bounce buffer and stack follow the code (see stub_end).
.set BOUNCE_BYTES, 1024
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
    movw $0x13, %cs:S_VECTOR
    jmp common_entry
1:  ljmp *%cs:S_OLD13

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
