# Edges of the engine: entered from the stub in 32-bit protected mode with ESI = the stub's
# linear address and EBX = the engine's stack top; leaves through the stub's 16-bit code.
# Offsets into the stub: stage2/src/stub.s.
.set S_BACK16, {S_BACK16}
.set S_BIOS16, {S_BIOS16}
.set S_ENGINE_SAVED_ESP, {S_ENGINE_SAVED_ESP}
.set SEL_DATA32,         0x10
.set S_GDT_DESC, {S_GDT_DESC}

.section .text.engine_entry, "ax"
.code32
.global engine_pm_entry
engine_pm_entry:
    mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov %ebx, %esp
    cld
    push %esi
    call engine_dispatch
    pop %esi
    ljmp *S_BACK16(%esi)

# void engine_bios_call(uint32_t stub_linear): run the original vector the stub was told about,
# with the registers in the stub's BIOS register block, in real mode; return here afterwards.
.global engine_bios_call
engine_bios_call:
    pushal
    mov 36(%esp), %esi
    # Called from a guest interrupt the stub's GDT is live; called from stage2 (engine_init reads
    # sector 0 for the geometry) stage2's is. Go down through the stub's and come back to
    # whichever was there.
    sub $8, %esp
    sgdt (%esp)
    lgdtl S_GDT_DESC(%esi)
    mov %esp, S_ENGINE_SAVED_ESP(%esi)
    ljmp *S_BIOS16(%esi)

.global engine_pm_resume
engine_pm_resume:
    mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov S_ENGINE_SAVED_ESP(%esi), %esp
    lgdtl (%esp)
    add $8, %esp
    cld
    popal
    ret
