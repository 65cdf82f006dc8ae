# vboot guest probe: a boot-sector program that exercises INT 13h on its boot drive the way
# real guests do and checks every answer against what the host wrote into the disk.
#
# Disk layout (written by tests/src/guests.rs, which documents it in full):
#   LBA 0      this boot sector (loaded by the BIOS to 0000:7C00)
#   LBA 1      the host's configuration sector, loaded to 0000:7E00
#   LBA 2..15  the probe body, loaded to 0000:8000
#   the rest   a known pattern: every sector starts with its LBA (u64 LE) and a tag, and ends
#              with the low 32 bits of its LBA again, so any sector read can be checked.
#
# Output: one line per check on COM1 (programmed here, 115200 8N1) and port 0xE9, a final
# "PROBE PASS" or "PROBE FAIL: <step>: <reason> want=.. got=..", then isa-debug-exit at port
# 0xF4 (0x10 pass -> QEMU status 33, 0x11 fail -> 35).
#
# Build: as --32 probe.s -o probe.o && ld -m elf_i386 -Ttext 0x7c00 --oformat binary probe.o

.code16
.intel_syntax noprefix

.equ CONFIG,            0x7E00
.equ CFG_TOTAL,         CONFIG + 0x08
.equ CFG_FLAGS,         CONFIG + 0x0C
.equ CFG_PATTERN_START, CONFIG + 0x10
.equ CFG_NBOUNDARIES,   CONFIG + 0x14
.equ CFG_NWRITES,       CONFIG + 0x18
.equ CFG_BOUNDARIES,    CONFIG + 0x20
.equ CFG_WRITES,        CONFIG + 0x40
.equ MAX_BOUNDARIES,    8
.equ MAX_WRITES,        8
.equ MAX_WRITE_SECTORS, 16

# flags (see guests.rs ProbeConfig)
.equ FLAG_EXACT_15H,      1
.equ FLAG_OOR_COUNT_ZERO, 2
.equ FLAG_CYLINDERS_C1,   4

.equ BODY_SECTORS,  14
.equ READ_SEG,      0x1000
.equ WRITE_SEG,     0x2000

.equ COM1, 0x3F8

# Fail unless the condition jump \jok is taken.
.macro CHECK jok, reason
    \jok .Lok\@
    call fail
    .asciz "\reason"
.Lok\@:
.endm

# Name the current step (printed by step_ok and by fail).
.macro STEP name
    call begin_step
    .asciz "\name"
.endm

.macro SAY text
    call say_inline
    .asciz "\text"
.endm

.text
.globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    .byte 0xEA                  # jmp 0000:boot_main, in case the BIOS used 07C0:0000
    .word boot_main, 0
boot_main:
    sti
    cld
    mov [drive], dl
    call serial_init
    SAY "PROBE start, boot drive "
    mov al, [drive]
    call print_hex8
    call newline

    # Config sector and body: one AH=02h read from C0 H0 S2, as a small MBR loader would.
    mov di, 3
.Lload:
    mov ax, 0x0200 + 1 + BODY_SECTORS
    mov cx, 0x0002
    xor dh, dh
    mov dl, [drive]
    mov bx, CONFIG
    int 0x13
    jnc .Lloaded
    xor ah, ah
    mov dl, [drive]
    int 0x13
    dec di
    jnz .Lload
    SAY "PROBE FAIL: boot: cannot load the probe body with AH=02h"
    call newline
    jmp exit_fail
.Lloaded:
    cmp dword ptr [CONFIG], 0x52504256      # "VBPR"
    jne .Lbadcfg
    cmp dword ptr [CONFIG + 4], 0x3145424F  # "OBE1"
    jne .Lbadcfg
    cmp dword ptr [body_magic], 0x59444F42  # "BODY": the body really arrived
    jne .Lbadbody
    jmp body_main
.Lbadcfg:
    SAY "PROBE FAIL: boot: LBA 1 holds no probe configuration (magic VBPROBE1)"
    call newline
    jmp exit_fail
.Lbadbody:
    SAY "PROBE FAIL: boot: body sectors did not load"
    call newline
    jmp exit_fail

# ---- output -------------------------------------------------------------------------------

serial_init:
    mov dx, COM1 + 1
    xor al, al
    out dx, al                  # no interrupts
    mov dx, COM1 + 3
    mov al, 0x80
    out dx, al                  # DLAB
    mov dx, COM1
    mov al, 1
    out dx, al                  # divisor 1 = 115200
    mov dx, COM1 + 1
    xor al, al
    out dx, al
    mov dx, COM1 + 3
    mov al, 3
    out dx, al                  # 8N1
    mov dx, COM1 + 2
    mov al, 0xC7
    out dx, al                  # FIFO on, cleared
    mov dx, COM1 + 4
    mov al, 3
    out dx, al
    ret

putc:                           # AL
    push dx
    push cx
    push ax
    mov cx, 0xFFFF              # bounded wait: a missing UART must not hang the probe
    mov dx, COM1 + 5
.Lwait:
    in al, dx
    test al, 0x20
    jnz .Lready
    loop .Lwait
.Lready:
    pop ax
    mov dx, COM1
    out dx, al
    out 0xE9, al
    pop cx
    pop dx
    ret

puts:                           # DS:SI, NUL-terminated
    push ax
    push si
.Lputs:
    lodsb
    test al, al
    jz .Lputs_end
    call putc
    jmp .Lputs
.Lputs_end:
    pop si
    pop ax
    ret

newline:
    push ax
    mov al, 13
    call putc
    mov al, 10
    call putc
    pop ax
    ret

# Print the NUL-terminated string that follows the call, return past it.
say_inline:                     # clobbers SI and the flags only
    pop si
    call puts
.Lskip:
    inc si
    cmp byte ptr [si - 1], 0
    jne .Lskip
    jmp si

print_hex8:                     # AL
    push ax
    push cx
    mov cx, 2
    shl eax, 24
    jmp .Lhex
print_hex32:                    # EAX
    push ax
    push cx
    mov cx, 8
.Lhex:
    rol eax, 4
    push ax
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .Ldigit
    add al, 'A' - '9' - 1
.Ldigit:
    call putc
    pop ax
    loop .Lhex
    pop cx
    pop ax
    ret

exit_pass:
    mov al, 0x10
    out 0xF4, al
    jmp halt
exit_fail:
    mov al, 0x11
    out 0xF4, al
halt:
    cli
    hlt
    jmp halt

drive: .byte 0

    .org 510
    .word 0xAA55

# ---- LBA 1: the host overwrites this sector with the configuration ------------------------
    .org 512
    .ascii "VBPROBE1"           # placeholder; guests.rs writes the real one
    .org 1024

# ---- body (LBA 2.., at 0000:8000) ---------------------------------------------------------
body_magic: .ascii "BODY"

begin_step:
    pop si
    mov [cur_step], si
.Lbs_skip:
    lodsb
    test al, al
    jnz .Lbs_skip
    jmp si

step_ok:
    push si
    SAY "ok "
    mov si, [cur_step]
    call puts
    call newline
    pop si
    ret

# The reason string follows the call; want/got hold the values that disagreed.
fail:
    SAY "PROBE FAIL: "
    mov si, [cur_step]
    call puts
    SAY ": "
    pop si
    call puts
    SAY " want="
    mov eax, [want]
    call print_hex32
    SAY " got="
    mov eax, [got]
    call print_hex32
    call newline
    jmp exit_fail

# ---- INT 13h wrappers ---------------------------------------------------------------------
# Inputs in io_lba / io_count / io_seg (buffer io_seg:0000). Each returns the BIOS CF and
# leaves AH in io_status. Registers a function does not return must come back unchanged
# (GRUB and isolinux rely on it): the wrappers load recognisable values and compare.

.equ SENT_EBX, 0x5EB0B000
.equ SENT_ECX, 0x5EC00000
.equ SENT_EDI, 0x5ED10000
.equ SENT_EBP, 0x5EB50000
.equ SENT_ESI_HI, 0x5E510000
.equ SENT_EDX_HI, 0x5ED00000

# AH=42h / AH=43h through the DAP.
read_lba:
    mov ax, 0x4200
    jmp ext_call
write_lba:
    mov ax, 0x4300
ext_call:
    push es
    mov byte ptr [dap], 0x10
    mov byte ptr [dap + 1], 0
    mov cx, [io_count]
    mov [dap + 2], cx
    mov cx, [io_off]
    mov [dap + 4], cx
    mov cx, [io_seg]
    mov [dap + 6], cx
    mov ecx, [io_lba]
    mov [dap + 8], ecx
    mov dword ptr [dap + 12], 0
    mov esi, SENT_ESI_HI
    mov si, offset dap
    mov [saved_esi], esi
    mov ebx, SENT_EBX
    mov ecx, SENT_ECX
    mov edi, SENT_EDI
    mov ebp, SENT_EBP
    mov edx, SENT_EDX_HI + 0x3300
    mov dl, [drive]
    mov [saved_edx], edx
    int 0x13
    mov [io_status], ah
    pushf
    cmp ecx, SENT_ECX
    jne .Lext_clobbered
    mov cx, [dap + 2]
    mov [io_done], cx
    cmp esi, [saved_esi]
    jne .Lext_clobbered
    cmp ebx, SENT_EBX
    jne .Lext_clobbered
    cmp edi, SENT_EDI
    jne .Lext_clobbered
    cmp ebp, SENT_EBP
    jne .Lext_clobbered
    cmp edx, [saved_edx]
    jne .Lext_clobbered
    popf
    pop es
    ret
.Lext_clobbered:
    popf
    pop es
    call fail
    .asciz "AH=42h/43h changed a register it does not return (SI, BX, DI, BP or DX)"

# AH=02h / AH=03h with CX/DH from chs_cx / chs_dh; AL = io_count.
read_chs:
    mov ah, 0x02
    jmp chs_call
write_chs:
    mov ah, 0x03
chs_call:
    push es
    mov al, [io_count]
    mov cx, [io_seg]
    mov es, cx
    mov ebx, SENT_EBX & 0xFFFF0000
    mov bx, [io_off]
    mov [saved_ebx], ebx
    mov ecx, SENT_ECX
    mov cx, [chs_cx]
    mov [saved_ecx], ecx
    mov esi, SENT_ESI_HI
    mov edi, SENT_EDI
    mov ebp, SENT_EBP
    mov edx, SENT_EDX_HI
    mov dh, [chs_dh]
    mov dl, [drive]
    mov [saved_edx], edx
    int 0x13
    mov [io_status], ah
    mov [io_done], al
    mov byte ptr [io_done + 1], 0
    pushf
    cmp ebx, [saved_ebx]
    jne .Lchs_clobbered
    cmp ecx, [saved_ecx]
    jne .Lchs_clobbered
    cmp edx, [saved_edx]
    jne .Lchs_clobbered
    cmp esi, SENT_ESI_HI
    jne .Lchs_clobbered
    cmp edi, SENT_EDI
    jne .Lchs_clobbered
    cmp ebp, SENT_EBP
    jne .Lchs_clobbered
    popf
    pop es
    ret
.Lchs_clobbered:
    popf
    pop es
    call fail
    .asciz "AH=02h/03h changed a register it does not return (BX, CX, DX, SI, DI or BP)"

# io_lba -> chs_cx / chs_dh with the AH=08h geometry. The caller ensures io_lba < chs_sectors.
lba_to_chs:
    mov eax, [io_lba]
    xor edx, edx
    div dword ptr [sectors_per_cylinder]
    mov cx, ax                  # cylinder (< 1024)
    mov ax, dx                  # sector within the cylinder (< 255 * 63)
    xor dx, dx
    xor bh, bh
    mov bl, [spt]
    div bx                      # AX = head, DX = sector - 1
    mov [chs_dh], al
    inc dl
    mov al, cl                  # CH = cylinder low 8 bits
    mov ah, ch                  # cylinder bits 9:8 -> CL bits 7:6
    shl ah, 6
    or ah, dl
    mov [chs_cx + 1], al
    mov [chs_cx], ah
    ret

# Zero the io_count sectors at io_seg:io_off, so that a read that transfers nothing cannot
# pass on what an earlier read left there.
clear_buffer:
    push es
    mov es, [io_seg]
    mov di, [io_off]
    movzx ecx, word ptr [io_count]
    shl ecx, 7
    xor eax, eax
    rep stosd
    pop es
    ret

# Check io_count sectors at io_seg:io_off hold the sectors io_lba.. with the tag at [cur_tag].
verify:
    push es
    mov es, [io_seg]
    mov di, [io_off]
    mov eax, [io_lba]
    mov cx, [io_count]
    mov si, [cur_tag]
.Lver:
    mov [want], eax
    mov edx, es:[di]
    mov [got], edx
    cmp edx, eax
    jne .Lver_lba
    cmp dword ptr es:[di + 4], 0
    jne .Lver_lba
    mov edx, es:[di + 508]
    mov [got], edx
    cmp edx, eax
    jne .Lver_tail
    mov edx, es:[di + 8]
    cmp edx, [si]
    jne .Lver_tag
    mov edx, es:[di + 12]
    cmp edx, [si + 4]
    jne .Lver_tag
    inc eax
    add di, 512
    loop .Lver
    pop es
    ret
.Lver_lba:
    pop es
    call fail
    .asciz "a sector read does not start with its own LBA (wrong sector, or no data)"
.Lver_tail:
    pop es
    call fail
    .asciz "a sector read does not end with its own LBA (partial transfer)"
.Lver_tag:
    mov edx, es:[di + 8]
    mov [got], edx
    mov edx, [si]
    mov [want], edx
    pop es
    call fail
    .asciz "a sector read carries the wrong tag (pattern vs written)"

# Read io_count sectors from io_lba with AH=42h and verify them.
lba_read_verify:
    call clear_buffer
    call read_lba
    mov eax, [io_lba]
    mov [want], eax
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jnc, "AH=42h failed (CF=1; got = AH status, want = LBA)"
    movzx eax, word ptr [io_count]
    mov [want], eax
    movzx eax, word ptr [io_done]
    mov [got], eax
    cmp ax, [io_count]
    CHECK je, "AH=42h rewrote the DAP block count on success"
    jmp verify

# The same through AH=02h (io_lba + io_count must lie within chs_sectors).
chs_read_verify:
    call clear_buffer
    call lba_to_chs
    call read_chs
    mov eax, [io_lba]
    mov [want], eax
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jnc, "AH=02h failed (CF=1; got = AH status, want = LBA)"
    movzx eax, byte ptr [io_count]
    mov [want], eax
    movzx eax, byte ptr [io_done]
    mov [got], eax
    cmp al, [io_count]
    CHECK je, "AH=02h returned AL different from the sector count"
    jmp verify

# lba_read_verify, and chs_read_verify too when the range is CHS-addressable.
both_read_verify:
    call lba_read_verify
    mov eax, [io_lba]
    movzx ecx, word ptr [io_count]
    add eax, ecx
    cmp eax, [chs_sectors]
    ja .Lboth_done
    call chs_read_verify
.Lboth_done:
    ret

# Fill io_count sectors at WRITE_SEG:0000 with the "written" pattern for io_lba.. (the same
# bytes guests.rs::written_sector makes).
fill_written:
    push es
    mov ax, WRITE_SEG
    mov es, ax
    xor di, di
    mov eax, [io_lba]
    mov cx, [io_count]
.Lfill:
    push cx
    mov es:[di], eax
    mov dword ptr es:[di + 4], 0
    mov dword ptr es:[di + 8], 0x52574256    # "VBWR"
    mov dword ptr es:[di + 12], 0x31455449   # "ITE1"
    mov es:[di + 508], eax
    mov bx, 16
.Lfill_byte:
    mov dl, bl
    xor dl, al
    xor dl, 0xFF
    mov es:[di + bx], dl
    inc bx
    cmp bx, 508
    jb .Lfill_byte
    inc eax
    add di, 512
    pop cx
    loop .Lfill
    pop es
    ret

# ---- the checks ---------------------------------------------------------------------------
body_main:
    mov word ptr [cur_tag], offset tag_pattern

    STEP "config"
    mov eax, [CFG_NBOUNDARIES]
    mov [got], eax
    mov dword ptr [want], MAX_BOUNDARIES
    cmp eax, MAX_BOUNDARIES
    CHECK jbe, "too many boundaries in the config sector"
    mov eax, [CFG_NWRITES]
    mov [got], eax
    mov dword ptr [want], MAX_WRITES
    cmp eax, MAX_WRITES
    CHECK jbe, "too many writes in the config sector"
    mov eax, [CFG_PATTERN_START]
    mov [got], eax
    mov dword ptr [want], 1 + 1 + BODY_SECTORS
    cmp eax, 1 + 1 + BODY_SECTORS
    CHECK jae, "the pattern must start after the probe body"
    call step_ok

    STEP "AH=00h reset"
    mov ah, 0x00
    mov dl, [drive]
    int 0x13
    movzx eax, ah
    mov [got], eax
    mov dword ptr [want], 0
    CHECK jnc, "reset failed"
    call step_ok

    STEP "AH=41h EDD installation check"
    mov ah, 0x41
    mov bx, 0x55AA
    mov dl, [drive]
    int 0x13
    mov [edd_version], ah
    movzx eax, ah
    mov [got], eax
    mov dword ptr [want], 0x30
    CHECK jnc, "CF=1: no INT 13h extensions"
    movzx eax, bx
    mov [got], eax
    mov dword ptr [want], 0xAA55
    cmp bx, 0xAA55
    CHECK je, "BX is not AA55h"
    movzx eax, cx
    mov [got], eax
    mov dword ptr [want], 1
    test cx, 1
    CHECK jnz, "CX bit 0 (fixed-disk access subset) is clear"
    SAY "  41h: version "
    mov al, [edd_version]
    call print_hex8
    SAY " subsets "
    movzx eax, cx
    call print_hex32
    call newline
    call step_ok

    STEP "AH=48h drive parameters"
    mov di, offset edd_buf
    mov cx, 0x1E
    xor al, al
    rep stosb
    mov word ptr [edd_buf], 0x1E
    mov ah, 0x48
    mov dl, [drive]
    mov si, offset edd_buf
    int 0x13
    movzx eax, ah
    mov [got], eax
    mov dword ptr [want], 0
    CHECK jnc, "CF=1"
    movzx eax, word ptr [edd_buf]
    mov [got], eax
    mov dword ptr [want], 0x1A
    cmp ax, 0x1A
    CHECK jae, "result size word below 1Ah"
    movzx eax, word ptr [edd_buf + 0x18]
    mov [got], eax
    mov dword ptr [want], 512
    cmp ax, 512
    CHECK je, "bytes per sector is not 512"
    mov eax, [edd_buf + 0x14]
    mov [got], eax
    mov dword ptr [want], 0
    test eax, eax
    CHECK jz, "total sectors above 2^32 (high dword)"
    mov eax, [edd_buf + 0x10]
    mov [got], eax
    mov edx, [CFG_TOTAL]
    mov [want], edx
    cmp eax, edx
    CHECK je, "total sectors differ from the disk size"
    mov [total], eax
    SAY "  48h: sectors "
    call print_hex32
    call newline
    call step_ok

    STEP "AH=08h geometry"
    xor di, di
    mov es, di
    mov ah, 0x08
    mov dl, [drive]
    int 0x13
    push 0
    pop es
    movzx eax, ah
    mov [got], eax
    mov dword ptr [want], 0
    CHECK jnc, "CF=1"
    movzx eax, dl
    mov [got], eax
    mov dword ptr [want], 1
    cmp dl, 1
    CHECK jae, "DL (drive count) is 0"
    mov al, cl
    and al, 0x3F
    mov [spt], al
    movzx eax, al
    mov [got], eax
    test al, al
    CHECK jnz, "sectors per track is 0"
    movzx ax, dh
    inc ax
    mov [heads], ax
    mov al, cl
    shr al, 6
    mov ah, al
    mov al, ch
    mov [max_cyl], ax
    SAY "  08h: last cylinder "
    movzx eax, word ptr [max_cyl]
    call print_hex32
    SAY " heads "
    movzx eax, word ptr [heads]
    call print_hex32
    SAY " sectors/track "
    movzx eax, byte ptr [spt]
    call print_hex32
    call newline
    movzx eax, word ptr [heads]
    movzx ecx, byte ptr [spt]
    mul ecx
    mov [sectors_per_cylinder], eax
    movzx ecx, word ptr [max_cyl]
    inc ecx
    mul ecx
    mov [chs_sectors], eax
    mov [got], eax
    mov edx, [total]
    mov [want], edx
    cmp eax, edx
    CHECK jbe, "the CHS geometry covers more sectors than the disk has"
    # Below 1024 cylinders the geometry must cover the disk but for the unused tail: at most
    # two cylinders (the BIOS's reserved one and the partial one).
    cmp word ptr [max_cyl], 1023
    jae .Lgeom_clamped
    mov ecx, [sectors_per_cylinder]
    add eax, ecx
    test dword ptr [CFG_FLAGS], FLAG_CYLINDERS_C1
    jnz .Lgeom_c1
    add eax, ecx
.Lgeom_c1:
    mov [got], eax
    cmp eax, edx
    CHECK ja, "the CHS geometry leaves too many sectors out (last cylinder too low)"
.Lgeom_clamped:
    mov eax, [chs_sectors]
    mov [want], eax
    mov eax, [CFG_PATTERN_START]
    add eax, 200
    mov [got], eax
    cmp eax, [chs_sectors]
    CHECK jb, "disk too small for the CHS checks"
    call step_ok

    STEP "AH=15h disk type"
    mov ax, 0x15FF
    mov cx, 0xFFFF
    mov dx, 0xFFFF
    mov dl, [drive]
    int 0x13
    pushf
    movzx eax, ah
    mov [got], eax
    mov dword ptr [want], 3
    popf
    CHECK jnc, "CF=1"
    cmp byte ptr [got], 3
    CHECK je, "AH is not 03h (fixed disk)"
    mov ax, cx
    shl eax, 16
    mov ax, dx
    mov [got], eax
    mov edx, [total]
    mov [want], edx
    cmp eax, edx
    je .L15_ok
    test dword ptr [CFG_FLAGS], FLAG_EXACT_15H
    CHECK jz, "CX:DX is not the disk's sector count"
    # SeaBIOS answers (C-1)*H*S; accept that when it agrees with AH=08h.
    mov edx, [chs_sectors]
    mov [want], edx
    cmp eax, edx
    CHECK je, "CX:DX is neither the sector count nor the AH=08h CHS size"
.L15_ok:
    SAY "  15h: sectors "
    call print_hex32
    call newline
    call step_ok

    STEP "AH=42h read of the config sector"
    mov dword ptr [io_lba], 1
    mov word ptr [io_count], 1
    mov word ptr [io_seg], READ_SEG
    call read_lba
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jnc, "CF=1"
    push ds
    push es
    mov ax, READ_SEG
    mov es, ax
    xor di, di
    mov si, CONFIG
    mov cx, 128
    repe cmpsd
    pop es
    pop ds
    CHECK je, "LBA 1 read by AH=42h differs from LBA 1 read by AH=02h at boot"
    call step_ok

    STEP "LBA reads at start, middle and end"
    mov word ptr [io_seg], READ_SEG
    mov word ptr [io_count], 1
    mov eax, [CFG_PATTERN_START]
    mov [io_lba], eax
    call lba_read_verify
    mov eax, [total]
    shr eax, 1
    mov [io_lba], eax
    call lba_read_verify
    mov eax, [total]
    dec eax
    mov [io_lba], eax
    call lba_read_verify
    call step_ok

    STEP "LBA multi-sector reads (8, 16, 127 sectors)"
    mov word ptr [io_count], 8
    mov eax, [CFG_PATTERN_START]
    mov [io_lba], eax
    call lba_read_verify
    mov word ptr [io_count], 16
    mov eax, [total]
    shr eax, 1
    sub eax, 5
    mov [io_lba], eax
    call lba_read_verify
    mov word ptr [io_count], 127
    mov eax, [total]
    shr eax, 1
    sub eax, 63
    mov [io_lba], eax
    call lba_read_verify
    mov eax, [total]          # the last 127 sectors, ending exactly at the end of the disk
    sub eax, 127
    cmp eax, [CFG_PATTERN_START]
    jb .Lno_tail127
    mov [io_lba], eax
    call lba_read_verify
.Lno_tail127:
    call step_ok

    STEP "reads into buffers with other segment:offset forms"
    mov word ptr [io_count], 4
    mov word ptr [io_seg], READ_SEG - 0x10
    mov word ptr [io_off], 0x0105
    mov eax, [CFG_PATTERN_START]
    add eax, 8
    mov [io_lba], eax
    call lba_read_verify
    mov word ptr [io_seg], READ_SEG + 0x801
    mov word ptr [io_off], 0x0003
    call chs_read_verify
    mov word ptr [io_seg], READ_SEG
    mov word ptr [io_off], 0
    call step_ok

    STEP "CHS reads at start, middle and end of the CHS range"
    mov word ptr [io_count], 1
    mov eax, [CFG_PATTERN_START]
    mov [io_lba], eax
    call chs_read_verify
    mov eax, [chs_sectors]
    shr eax, 1
    mov [io_lba], eax
    call chs_read_verify
    mov eax, [chs_sectors]
    dec eax
    mov [io_lba], eax
    call chs_read_verify
    call step_ok

    STEP "CHS multi-sector reads across track and cylinder ends, and 127 sectors"
    mov word ptr [io_count], 4          # across a head (track) change in a middle cylinder
    movzx eax, word ptr [max_cyl]
    shr eax, 1
    inc eax
    mul dword ptr [sectors_per_cylinder]
    mov [mid_cyl_lba], eax              # the first sector of a middle cylinder
    movzx ecx, byte ptr [spt]
    add eax, ecx
    sub eax, 2
    mov [io_lba], eax
    call chs_read_verify
    mov eax, [mid_cyl_lba]              # across the cylinder change
    sub eax, 2
    mov [io_lba], eax
    call chs_read_verify
    mov word ptr [io_count], 127
    mov eax, [chs_sectors]
    shr eax, 1
    sub eax, 60
    mov [io_lba], eax
    call chs_read_verify
    mov eax, [chs_sectors]              # ending on the last CHS-addressable sector
    sub eax, 127
    cmp eax, [CFG_PATTERN_START]
    jb .Lno_chs_tail
    mov [io_lba], eax
    call chs_read_verify
.Lno_chs_tail:
    call step_ok

    STEP "reads across the host's boundaries"
    xor bx, bx
.Lbound:
    cmp bx, [CFG_NBOUNDARIES]
    jae .Lbound_done
    push bx
    shl bx, 2
    mov eax, [CFG_BOUNDARIES + bx]
    mov [bound], eax
    mov [got], eax
    mov edx, [CFG_PATTERN_START]
    add edx, 64
    mov [want], edx
    cmp eax, edx
    CHECK jae, "boundary too close to the start of the pattern (need pattern_start + 64)"
    mov edx, [total]
    sub edx, 64
    mov [want], edx
    cmp eax, edx
    CHECK jbe, "boundary too close to the end of the disk (need total - 64)"
    SAY "  boundary "
    call print_hex32
    call newline
    mov word ptr [io_count], 2          # the two sectors either side, then 4 straddling
    mov eax, [bound]
    sub eax, 1
    mov [io_lba], eax
    call both_read_verify
    mov word ptr [io_count], 4
    mov eax, [bound]
    sub eax, 2
    mov [io_lba], eax
    call both_read_verify
    mov word ptr [io_count], 127        # ending just after, starting just before, centred
    mov eax, [bound]
    sub eax, 126
    mov [io_lba], eax
    cmp eax, [CFG_PATTERN_START]
    jb .Lbound_no_before
    call both_read_verify
.Lbound_no_before:
    mov eax, [bound]
    dec eax
    mov [io_lba], eax
    mov edx, eax
    add edx, 127
    cmp edx, [total]
    ja .Lbound_no_after
    call both_read_verify
.Lbound_no_after:
    mov eax, [bound]
    sub eax, 63
    mov [io_lba], eax
    call both_read_verify
    pop bx
    inc bx
    jmp .Lbound
.Lbound_done:
    call step_ok

    STEP "AH=42h past the end of the disk fails"
    mov word ptr [io_count], 1
    mov eax, [total]
    mov [io_lba], eax
    mov [want], eax
    call read_lba
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jc, "CF=0 for a read starting at the sector count (want = LBA, got = AH)"
    mov dword ptr [want], 0
    movzx eax, word ptr [io_done]
    mov [got], eax
    SAY "  42h at the end: status "
    mov al, [io_status]
    call print_hex8
    SAY " DAP count "
    mov eax, [got]
    call print_hex32
    call newline
    test dword ptr [CFG_FLAGS], FLAG_OOR_COUNT_ZERO
    jz .Loor_count_any
    cmp word ptr [io_done], 0
    CHECK je, "the DAP block count was not rewritten to 0"
.Loor_count_any:
    mov word ptr [io_count], 4          # straddling the end: two sectors exist, two do not
    mov eax, [total]
    sub eax, 2
    mov [io_lba], eax
    mov [want], eax
    call read_lba
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jc, "CF=0 for a read running past the end (want = LBA, got = AH)"
    movzx eax, word ptr [io_done]
    mov [got], eax
    mov dword ptr [want], 2
    SAY "  42h across the end: status "
    mov al, [io_status]
    call print_hex8
    SAY " DAP count "
    mov eax, [got]
    call print_hex32
    call newline
    cmp word ptr [io_done], 2
    CHECK jbe, "the DAP block count claims sectors past the end were read"
    mov ax, [io_done]                   # what it claims it read must be right
    test ax, ax
    jz .Loor_none_done
    mov [io_count], ax
    call verify
.Loor_none_done:
    call step_ok

    STEP "CHS requests with sector 0 or past the track fail"
    mov word ptr [io_seg], READ_SEG
    mov word ptr [io_count], 1
    mov word ptr [chs_cx], 0x0000
    mov byte ptr [chs_dh], 0
    call read_chs
    movzx eax, byte ptr [io_status]
    mov [got], eax
    mov dword ptr [want], 1
    CHECK jc, "AH=02h with sector 0 succeeded"
    mov ah, 0x01                        # the last-status byte keeps the failure
    mov dl, [drive]
    int 0x13
    movzx eax, ah
    mov [got], eax
    test eax, eax
    CHECK jnz, "AH=01h after a failed call reports success"
    cmp byte ptr [spt], 63
    jae .Lno_past_track
    mov al, [spt]
    inc al
    xor ah, ah
    mov [chs_cx], ax
    call read_chs
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jc, "AH=02h with sector = sectors per track + 1 succeeded"
.Lno_past_track:
    call step_ok

    STEP "writes with read-back"
    mov word ptr [cur_tag], offset tag_written
    xor bx, bx
.Lwrite:
    cmp bx, [CFG_NWRITES]
    jae .Lwrite_done
    push bx
    shl bx, 3
    mov eax, [CFG_WRITES + bx]
    mov [io_lba], eax
    mov [got], eax
    mov edx, [CFG_PATTERN_START]
    mov [want], edx
    cmp eax, edx
    CHECK jae, "write LBA inside the probe itself"
    mov ecx, [CFG_WRITES + bx + 4]
    mov [io_count], cx
    mov [got], ecx
    mov dword ptr [want], MAX_WRITE_SECTORS
    cmp ecx, MAX_WRITE_SECTORS
    CHECK jbe, "write longer than 16 sectors"
    cmp ecx, 1
    CHECK jae, "write of 0 sectors"
    add eax, ecx
    mov [got], eax
    mov edx, [total]
    mov [want], edx
    cmp eax, edx
    CHECK jbe, "write past the end of the disk"
    SAY "  write "
    mov eax, [io_lba]
    call print_hex32
    SAY " +"
    movzx eax, word ptr [io_count]
    call print_hex8
    call fill_written
    mov word ptr [io_seg], WRITE_SEG
    pop bx
    push bx
    test bl, 1                          # odd entries through CHS when they fit
    jz .Lwrite_ext
    mov eax, [io_lba]
    movzx ecx, word ptr [io_count]
    add eax, ecx
    cmp eax, [chs_sectors]
    ja .Lwrite_ext
    SAY " by AH=03h"
    call newline
    call lba_to_chs
    call write_chs
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jnc, "AH=03h failed"
    movzx eax, byte ptr [io_count]
    mov [want], eax
    movzx eax, byte ptr [io_done]
    mov [got], eax
    cmp al, [io_count]
    CHECK je, "AH=03h returned AL different from the sector count"
    jmp .Lwrite_readback
.Lwrite_ext:
    SAY " by AH=43h"
    call newline
    call write_lba
    movzx eax, byte ptr [io_status]
    mov [got], eax
    CHECK jnc, "AH=43h failed"
    mov ax, [io_done]
    cmp ax, [io_count]
    CHECK je, "AH=43h rewrote the DAP block count on success"
.Lwrite_readback:
    mov word ptr [io_seg], READ_SEG
    call both_read_verify
    pop bx
    inc bx
    jmp .Lwrite
.Lwrite_done:
    call step_ok

    SAY "PROBE PASS"
    call newline
    jmp exit_pass

# ---- data ---------------------------------------------------------------------------------
tag_pattern: .ascii "VBPATTRN"
tag_written: .ascii "VBWRITE1"

    .balign 4
dap:        .space 16
edd_buf:    .space 0x1E
    .balign 4
io_lba:     .long 0
io_count:   .word 0
io_seg:     .word READ_SEG
io_off:     .word 0
io_done:    .word 0
io_status:  .byte 0
chs_dh:     .byte 0
chs_cx:     .word 0
cur_step:   .word 0
cur_tag:    .word 0
    .balign 4
want:       .long 0
got:        .long 0
saved_ecx:  .long 0
saved_edx:  .long 0
saved_esi:  .long 0
saved_ebx:  .long 0
total:      .long 0
chs_sectors: .long 0
sectors_per_cylinder: .long 0
bound:      .long 0
mid_cyl_lba: .long 0
max_cyl:    .word 0
heads:      .word 0
spt:        .byte 0
edd_version: .byte 0

    .org 1024 + BODY_SECTORS * 512
