package wsio

import "sync"

// bufPool shares batch buffers between connections: a buffer is borrowed
// for one batch only, so that an idle connection holds none.
type bufPool struct{ pool sync.Pool }

// get borrows a buffer.
func (p *bufPool) get() *[]byte {
	if v, ok := p.pool.Get().(*[]byte); ok {
		return v
	}
	b := make([]byte, 0, 4<<10)
	return &b
}

// put returns a buffer; an outsized one is left to the garbage collector.
func (p *bufPool) put(b *[]byte) {
	if cap(*b) > 2*maxBatchBytes {
		return
	}
	*b = (*b)[:0]
	p.pool.Put(b)
}
