# The register block of a real-mode interrupt, vboot::realmode::Regs (src/realmode.rs), for the
# assembly of stage2 (entry.s: the BIOS-call thunk) and of the resident stub (stub.s). The field
# offsets come from vboot::realmode::regs_offset as `const` operands of the global_asm! that
# includes this file ahead of those two (stage2/src/main.rs), so no offset is typed here.
.set R_EAX, {R_EAX}
.set R_EBX, {R_EBX}
.set R_ECX, {R_ECX}
.set R_EDX, {R_EDX}
.set R_ESI, {R_ESI}
.set R_EDI, {R_EDI}
.set R_EBP, {R_EBP}
.set R_DS, {R_DS}
.set R_ES, {R_ES}
.set R_FLAGS, {R_FLAGS}
.set R_SIZE, {R_SIZE}

# The seven general registers to and from a register block, through CS (in the stub DS belongs
# to the caller; in stage2's thunk CS and DS are both 0).
.macro SAVE_GPRS block
    mov %eax, %cs:\block+R_EAX
    mov %ebx, %cs:\block+R_EBX
    mov %ecx, %cs:\block+R_ECX
    mov %edx, %cs:\block+R_EDX
    mov %esi, %cs:\block+R_ESI
    mov %edi, %cs:\block+R_EDI
    mov %ebp, %cs:\block+R_EBP
.endm
.macro LOAD_GPRS block
    mov %cs:\block+R_EAX, %eax
    mov %cs:\block+R_EBX, %ebx
    mov %cs:\block+R_ECX, %ecx
    mov %cs:\block+R_EDX, %edx
    mov %cs:\block+R_ESI, %esi
    mov %cs:\block+R_EDI, %edi
    mov %cs:\block+R_EBP, %ebp
.endm
