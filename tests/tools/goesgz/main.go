// goesgz: a tar on stdin as an eStargz blob on stdout, laid out as stargz-snapshotter's
// Writer lays it (docs/estargz.md): headers re-encoded by Go's archive/tar into the open gzip
// member; a member closed before each chunk of a regular file's content and a new one
// started there, so the padding and the headers after it share the last chunk's member;
// the TOC as the last tar entry, stargz.index.json, with the end-of-archive blocks, in a
// member of its own; the 51-byte footer.  The TOC's digest (the layer annotation) goes to
// stderr.  Usage: goesgz CHUNK_SIZE.  A test oracle: blobs made by Go, not by the tests'
// Python builder.
package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

type entry struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Size        int64             `json:"size,omitempty"`
	LinkName    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	UID         int               `json:"uid,omitempty"`
	GID         int               `json:"gid,omitempty"`
	DevMajor    int64             `json:"devMajor,omitempty"`
	DevMinor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string][]byte `json:"xattrs,omitempty"`
	Digest      string            `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkDigest string            `json:"chunkDigest,omitempty"`
}

// counter counts the compressed bytes written: the offsets in the TOC.
type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// members writes into the open gzip member, opening one when none is.
type members struct {
	out *counter
	gz  *gzip.Writer
}

func (m *members) Write(p []byte) (int, error) {
	if m.gz == nil {
		m.gz, _ = gzip.NewWriterLevel(m.out, gzip.BestCompression)
	}
	return m.gz.Write(p)
}

func (m *members) close() {
	if m.gz != nil {
		must(m.gz.Close())
		m.gz = nil
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "goesgz:", err)
		os.Exit(1)
	}
}

func sha(h interface{ Sum([]byte) []byte }) string { return fmt.Sprintf("sha256:%x", h.Sum(nil)) }

var types = map[byte]string{tar.TypeLink: "hardlink", tar.TypeSymlink: "symlink",
	tar.TypeDir: "dir", tar.TypeReg: "reg", tar.TypeChar: "char", tar.TypeBlock: "block",
	tar.TypeFifo: "fifo"}

func main() {
	chunk, err := strconv.ParseInt(os.Args[1], 10, 64)
	must(err)
	bw := bufio.NewWriter(os.Stdout)
	m := &members{out: &counter{w: bw}}
	var toc []*entry
	tr := tar.NewReader(bufio.NewReader(os.Stdin))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(err)
		kind, ok := types[h.Typeflag]
		if !ok {
			must(fmt.Errorf("unsupported entry type %q", h.Typeflag))
		}
		ent := &entry{Name: h.Name, Type: kind, LinkName: h.Linkname, Mode: h.Mode,
			UID: h.Uid, GID: h.Gid, DevMajor: h.Devmajor, DevMinor: h.Devminor}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				if ent.Xattrs == nil {
					ent.Xattrs = map[string][]byte{}
				}
				ent.Xattrs[strings.TrimPrefix(k, "SCHILY.xattr.")] = []byte(v)
			}
		}
		if kind == "reg" {
			ent.Size = h.Size
		}
		tw := tar.NewWriter(m)
		must(tw.WriteHeader(h))
		reg, whole := ent, sha256.New()
		for written := int64(0); kind == "reg" && written < reg.Size; {
			m.close()
			n := reg.Size - written
			if n >= chunk {
				n, ent.ChunkSize = chunk, chunk
			}
			ent.Offset, ent.ChunkOffset = m.out.n, written
			part := sha256.New()
			_, err := io.CopyN(tw, io.TeeReader(tr, io.MultiWriter(whole, part)), n)
			must(err)
			ent.ChunkDigest = sha(part)
			toc = append(toc, ent)
			written += n
			ent = &entry{Name: h.Name, Type: "chunk"}
		}
		if kind == "reg" && reg.Size > 0 {
			reg.Digest = sha(whole)
		} else {
			toc = append(toc, ent)
		}
		must(tw.Flush())
	}
	m.close()
	at := m.out.n
	doc, err := json.MarshalIndent(map[string]interface{}{"version": 1, "entries": toc}, "", "\t")
	must(err)
	tw := tar.NewWriter(m)
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "stargz.index.json",
		Size: int64(len(doc))}))
	_, err = tw.Write(doc)
	must(err)
	must(tw.Close())
	m.close()
	sub := fmt.Sprintf("%016xSTARGZ", at)
	extra := append([]byte{'S', 'G', 0, 0}, sub...)
	binary.LittleEndian.PutUint16(extra[2:4], uint16(len(sub)))
	footer, _ := gzip.NewWriterLevel(bw, gzip.NoCompression)
	footer.Header.Extra = extra
	must(footer.Close())
	must(bw.Flush())
	sum := sha256.Sum256(doc)
	fmt.Fprintf(os.Stderr, "sha256:%x\n", sum)
}
