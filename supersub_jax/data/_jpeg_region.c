/* Decodes only a region of a JPEG with libjpeg-turbo: the rows above the region are skipped without their inverse
 * DCT (jpeg_skip_scanlines), the rows below are never read, and only the region's iMCU columns are transformed and
 * colour-converted (jpeg_crop_scanline); optionally at a DCT scale of 1/2, 1/4 or 1/8.
 *
 * decode_region(jpeg, left, top, right, bottom, denom) -> (pixels: bytes, height, width, x_offset)
 *   jpeg: a bytes-like JPEG; the region [left, right) x [top, bottom) is in pixels of the image decoded at scale
 *   1/denom (denom in 1, 2, 4, 8). Returns RGB rows top..bottom-1 of the columns x_offset..x_offset+width-1, a span
 *   that covers [left, right) (libjpeg-turbo widens it to whole iMCU columns). Raises ValueError for what libjpeg
 *   cannot decode to RGB (CMYK, corrupt data): the caller falls back to a whole decode.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct error_mgr {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
  struct error_mgr *err = (struct error_mgr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
  (void)cinfo;
  (void)level; /* warnings (e.g. premature end of data) are not errors: the decoder pads, as pillow does */
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer jpeg;
  int left, top, right, bottom, denom;
  if (!PyArg_ParseTuple(args, "y*iiiii", &jpeg, &left, &top, &right, &bottom, &denom)) return NULL;
  struct jpeg_decompress_struct cinfo;
  struct error_mgr err;
  PyObject *volatile out = NULL;
  PyThreadState *volatile released = NULL;
  volatile int created = 0;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    if (released) PyEval_RestoreThread(released);
    if (created) jpeg_destroy_decompress(&cinfo);
    Py_XDECREF(out);
    PyBuffer_Release(&jpeg);
    PyErr_Format(PyExc_ValueError, "libjpeg: %s", err.message);
    return NULL;
  }
  if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
    PyBuffer_Release(&jpeg);
    PyErr_Format(PyExc_ValueError, "denom=%d: use 1, 2, 4 or 8", denom);
    return NULL;
  }
  jpeg_create_decompress(&cinfo);
  created = 1;
  jpeg_mem_src(&cinfo, (const unsigned char *)jpeg.buf, (unsigned long)jpeg.len);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    strcpy(err.message, "CMYK/YCCK JPEG");
    longjmp(err.jump, 1);
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned int)denom;
  jpeg_start_decompress(&cinfo);
  if (left < 0 || top < 0 || right > (int)cinfo.output_width || bottom > (int)cinfo.output_height || left >= right ||
      top >= bottom) {
    snprintf(err.message, sizeof(err.message), "region [%d, %d) x [%d, %d) is outside the %ux%u decoded image",
             left, right, top, bottom, cinfo.output_width, cinfo.output_height);
    longjmp(err.jump, 1);
  }
  JDIMENSION x_offset = (JDIMENSION)left, width = (JDIMENSION)(right - left);
  if (x_offset > 0 || width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &x_offset, &width);
  const size_t row_bytes = (size_t)width * 3;
  const int rows = bottom - top;
  out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(row_bytes * (size_t)rows));
  if (out == NULL) {
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&jpeg);
    return NULL;
  }
  unsigned char *pixels = (unsigned char *)PyBytes_AS_STRING(out);
  released = PyEval_SaveThread();  /* the work below touches no Python object */
  if (top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
  while ((int)cinfo.output_scanline < bottom) {
    JSAMPROW row = pixels + row_bytes * (size_t)((int)cinfo.output_scanline - top);
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_abort_decompress(&cinfo); /* the rows below the region are never decoded */
  PyEval_RestoreThread(released);
  released = NULL;
  jpeg_destroy_decompress(&cinfo);
  PyBuffer_Release(&jpeg);
  PyObject *result = Py_BuildValue("(Niii)", out, rows, (int)width, (int)x_offset);
  return result;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(jpeg, left, top, right, bottom, denom) -> (RGB bytes, height, width, x_offset)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_region",
                                    "Region decoding of JPEGs with libjpeg-turbo (see decode_region).", -1, methods};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
