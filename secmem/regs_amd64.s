#include "textflag.h"

// func clearRegisters()
// Zeroes the sixteen X registers (the low halves of the Y registers; Go's
// AVX code zeroes the high halves itself with VZEROUPPER before it returns).
TEXT ·clearRegisters(SB), NOSPLIT, $0-0
	PXOR	X0, X0
	PXOR	X1, X1
	PXOR	X2, X2
	PXOR	X3, X3
	PXOR	X4, X4
	PXOR	X5, X5
	PXOR	X6, X6
	PXOR	X7, X7
	PXOR	X8, X8
	PXOR	X9, X9
	PXOR	X10, X10
	PXOR	X11, X11
	PXOR	X12, X12
	PXOR	X13, X13
	PXOR	X14, X14
	PXOR	X15, X15
	RET

// func readRegisters(out *[16][16]byte)
// Stores X0-X15 into out, for the test of clearRegisters.
TEXT ·readRegisters(SB), NOSPLIT, $0-8
	MOVQ	out+0(FP), AX
	MOVOU	X0, 0(AX)
	MOVOU	X1, 16(AX)
	MOVOU	X2, 32(AX)
	MOVOU	X3, 48(AX)
	MOVOU	X4, 64(AX)
	MOVOU	X5, 80(AX)
	MOVOU	X6, 96(AX)
	MOVOU	X7, 112(AX)
	MOVOU	X8, 128(AX)
	MOVOU	X9, 144(AX)
	MOVOU	X10, 160(AX)
	MOVOU	X11, 176(AX)
	MOVOU	X12, 192(AX)
	MOVOU	X13, 208(AX)
	MOVOU	X14, 224(AX)
	MOVOU	X15, 240(AX)
	RET
