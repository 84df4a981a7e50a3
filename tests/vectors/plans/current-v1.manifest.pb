
÷ctr"2026-01-01T00:00:00.000000Z*&
dense_featuresfloat32ÿÿÿÿÿÿÿÿÿ* 

sparse_idsint64ÿÿÿÿÿÿÿÿÿ2
scorefloat32
ÿÿÿÿÿÿÿÿÿ:Œ
fp32onnxruntime
model.onnx"Q

model.onnxì@4a098a19cab892cefb257ad1c32fa31e6157072baa6fc2e97365ece30fdf20ef"V
model.onnx.data€@258a91f8871f73e2855b70cfe3170dfba872ae8e0241f74e4fc156f2da1e8f5b*@5982b79f58d86e43d2b5b0bdb1ec0f78f4a4bd49e4a750ee086cfc55de74f132:º
tflite_fp32litertmodel.tflite"S
model.tfliteè@28cd799b74ea057910ea2e2974d5e4c51b973effc25c058b469e4e91a2197324*@54afd78237612c3acacba857fcff5628bd2b3d5e9929fa519246f51da4eaf012B2026-01-08T00:00:00.000000Z„
@6cef6b2eedeedd085967b5f8d9b5d8791b52406c9151d3a8234e7089a6a95e0d@`Ô›Cl,$¸3Ig­GÍP2ãsED“>µÁ~é“$˜È.Ÿ…ôå[˜q}<y*ÌÖ¸Ò*ïF´ç„D@{6